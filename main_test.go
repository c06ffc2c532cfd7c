package main

import (
	"os"
	"regexp"
	"slices"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestREADMEFlagTable checks the README's flag table against the flags the
// binary accepts: every flag documented with its environment variable, and
// nothing documented that does not exist.
func TestREADMEFlagTable(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := regexp.MustCompile("(?m)^\\| `--([a-z0-9-]+)` \\| `(WSGATE_[A-Z0-9_]+)` \\|").FindAllStringSubmatch(string(readme), -1)
	documented := map[string]string{}
	for _, r := range rows {
		documented[r[1]] = r[2]
	}
	var names []string
	for _, f := range flags(true) {
		name := f.Names()[0]
		names = append(names, name)
		env, ok := documented[name]
		if !ok {
			t.Errorf("--%s is missing from the README's flag table", name)
			continue
		}
		var envs []string
		if ev, ok := f.(interface{ GetEnvVars() []string }); ok {
			envs = ev.GetEnvVars()
		}
		if !slices.Contains(envs, env) {
			t.Errorf("--%s: README says %s, the flag reads %v", name, env, envs)
		}
	}
	for name := range documented {
		if !slices.Contains(names, name) {
			t.Errorf("the README documents --%s, which the binary does not have", name)
		}
	}
}

func TestCheckConfig(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want int
	}{
		{name: "minimal", args: []string{"--upstream", "http://127.0.0.1:3000"}, want: 0},
		{name: "no upstream", want: exitBadConfig},
		{name: "bad scheme", args: []string{"--upstream", "ftp://x"}, want: exitBadConfig},
		{name: "bad duration", args: []string{"--upstream", "http://x:1", "--idle-timeout", "soon"}, want: exitBadConfig},
		{name: "bad rule", args: []string{"--upstream", "http://x:1", "--user-rate", "10/x"}, want: exitBadConfig},
		{name: "bad size", args: []string{"--upstream", "http://x:1", "--max-message-bytes", "1XB"}, want: exitBadConfig},
		{name: "bad env", args: []string{"--upstream", "http://x:1"}, env: map[string]string{"WSGATE_IP_RATE": "many"}, want: exitBadConfig},
		{name: "env ok", env: map[string]string{"WSGATE_UPSTREAM": "http://x:1", "WSGATE_MAX_MESSAGE_BYTES": "64KiB"}, want: 0},
		{name: "bad failure mode", args: []string{"--upstream", "http://x:1", "--failure-mode", "maybe"}, want: exitBadConfig},
		{name: "bad trusted proxy", args: []string{"--upstream", "http://x:1", "--trusted-proxies", "10.0.0.0/99"}, want: exitBadConfig},
		{name: "proxy protocol without trusted", args: []string{"--upstream", "http://x:1", "--proxy-protocol"}, want: exitBadConfig},
		{name: "unknown flag", args: []string{"--upstream", "http://x:1", "--frobnicate"}, want: exitBadConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			err := newApp().Run(append([]string{"wsgate", "check-config"}, tt.args...))
			code := 0
			if ec, ok := err.(cli.ExitCoder); ok {
				code = ec.ExitCode()
			} else if err != nil {
				code = 1
			}
			if code != tt.want {
				t.Fatalf("exit %d (%v), want %d", code, err, tt.want)
			}
		})
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1024": 1024, "1KiB": 1024, "16KiB": 16 << 10, "1MiB": 1 << 20, "2 MB": 2 << 20, "1GiB": 1 << 30} {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "1XB", "1.5MiB"} {
		if _, err := parseBytes(in); err == nil {
			t.Errorf("parseBytes(%q) succeeded", in)
		}
	}
}
