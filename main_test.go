package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
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
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	secret := file("secret", "0123456789abcdef0123456789abcdef")
	empty := file("empty", "")
	garbage := file("garbage.pem", "not a key")
	up := []string{"--upstream", "http://x:1"}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		flag string // the flag the one line names; "" = accepted
	}{
		{name: "minimal", args: []string{"--upstream", "http://127.0.0.1:3000"}},
		{name: "no upstream", flag: "--upstream"},
		{name: "bad scheme", args: []string{"--upstream", "ftp://x"}, flag: "--upstream"},
		{name: "bad duration", args: append(up, "--idle-timeout", "soon"), flag: "idle-timeout"},
		{name: "bad rule", args: append(up, "--user-rate", "10/x"), flag: "--user-rate"},
		{name: "bad size", args: append(up, "--max-message-bytes", "1XB"), flag: "--max-message-bytes"},
		{name: "bad env", args: up, env: map[string]string{"WSGATE_IP_RATE": "many"}, flag: "--ip-rate"},
		{name: "env ok", env: map[string]string{"WSGATE_UPSTREAM": "http://x:1", "WSGATE_MAX_MESSAGE_BYTES": "64KiB"}},
		{name: "bad failure mode", args: append(up, "--failure-mode", "maybe"), flag: "--failure-mode"},
		{name: "bad trusted proxy", args: append(up, "--trusted-proxies", "10.0.0.0/99"), flag: "--trusted-proxies"},
		{name: "proxy protocol without trusted", args: append(up, "--proxy-protocol"), flag: "--proxy-protocol"},
		{name: "unknown flag", args: append(up, "--frobnicate"), flag: "frobnicate"},
		{name: "sub-millisecond block", args: append(up, "--user-block", "1500us"), flag: "--user-block"},
		{name: "sub-millisecond ip block", args: append(up, "--ip-block", "2.5ms"), flag: "--ip-block"},
		{name: "sub-millisecond window", args: append(up, "--ip-conn-rate", "5/1500us"), flag: "--ip-conn-rate"},
		{name: "key prefix with a brace", args: append(up, "--key-prefix", "a{b"), flag: "--key-prefix"},
		{name: "bad redis url", args: append(up, "--redis-url", "redis://:s3cret@host:port/0"), flag: "--redis-url"},
		{name: "hmac secret", args: append(up, "--jwt-hmac-secret-file", secret)},
		{name: "empty hmac secret", args: append(up, "--jwt-hmac-secret-file", empty), flag: "--jwt-hmac-secret-file"},
		{name: "missing hmac secret", args: append(up, "--jwt-hmac-secret-file", filepath.Join(dir, "nope")), flag: "--jwt-hmac-secret-file"},
		{name: "garbage key file", args: append(up, "--jwt-key-file", garbage), flag: "--jwt-key-file"},
		{name: "algorithm fits no key", args: append(up, "--jwt-hmac-secret-file", secret, "--jwt-algorithms", "RS256"), flag: "--jwt-algorithms"},
		{name: "unknown algorithm", args: append(up, "--jwt-algorithms", "none"), flag: "--jwt-algorithms"},
		{name: "bad jwks url", args: append(up, "--jwks-url", "ftp://x"), flag: "--jwks-url"},
		{name: "negative leeway", args: append(up, "--jwt-leeway", "-1s"), flag: "--jwt-leeway"},
		{name: "negative pass cap", args: append(up, "--max-pass-requests", "-1"), flag: "--max-pass-requests"},
		{name: "upstream with a password and a bad port", args: []string{"--upstream", "http://u:s3cret@x:port"}, flag: "--upstream"},
		{name: "upstream with a key and a bad scheme", args: []string{"--upstream", "ftp://x/?key=s3cret"}, flag: "--upstream"},
		{name: "jwks url with a password and a bad scheme", args: append(up, "--jwks-url", "ftp://u:s3cret@x/jwks?api_key=s3cret"), flag: "--jwks-url"},
		{name: "redis url with a password and a bad port", args: append(up, "--redis-url", "redis://:s3cret@x:port/0"), flag: "--redis-url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			err := newApp().Run(append([]string{"wsgate", "check-config"}, tt.args...))
			checkExit(t, err, tt.flag)
		})
	}
}

// checkExit fails unless err is nil when flag is "", or otherwise an exit
// with code 2 and one line that names flag and quotes no secret.
func checkExit(t *testing.T, err error, flag string) {
	t.Helper()
	code := 0
	if ec, ok := err.(cli.ExitCoder); ok {
		code = ec.ExitCode()
	} else if err != nil {
		code = 1
	}
	switch {
	case flag == "" && code != 0:
		t.Fatalf("exit %d (%v), want 0", code, err)
	case flag == "":
	case code != exitBadConfig:
		t.Fatalf("exit %d (%v), want %d", code, err, exitBadConfig)
	case !strings.Contains(err.Error(), flag) || strings.Contains(err.Error(), "\n"):
		t.Fatalf("%q: want one line naming %s", err.Error(), flag)
	case strings.Contains(err.Error(), "s3cret"):
		t.Fatalf("%q quotes a secret", err.Error())
	}
}

// TestStartNamesFlag: a configuration the gate cannot start with stops it
// before it listens, with the line check-config prints.
func TestStartNamesFlag(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		flag string
	}{
		{[]string{"--user-block", "1500us"}, "--user-block"},
		{[]string{"--jwt-hmac-secret-file", empty}, "--jwt-hmac-secret-file"},
	} {
		t.Run(tt.flag, func(t *testing.T) {
			args := append([]string{"wsgate", "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0",
				"--admin-listen", "127.0.0.1:0", "--log-level", "error"}, tt.args...)
			checkExit(t, newApp().Run(args), tt.flag)
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
