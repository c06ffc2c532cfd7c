package main

import (
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/holo/wsgate/limit"
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
		{name: "admin command's variable", args: up, env: map[string]string{"WSGATE_ADMIN_URL": "http://127.0.0.1:9191"}},
		{name: "bad failure mode", args: append(up, "--failure-mode", "maybe"), flag: "--failure-mode"},
		{name: "bad trusted proxy", args: append(up, "--trusted-proxies", "10.0.0.0/99"), flag: "--trusted-proxies"},
		{name: "proxy protocol without trusted", args: append(up, "--proxy-protocol"), flag: "--proxy-protocol"},
		{name: "origin without a scheme", args: append(up, "--allowed-origins", "app.example.com"), flag: "--allowed-origins"},
		{name: "origin with a slash", args: append(up, "--allowed-origins", "https://app.example.com/"), flag: "--allowed-origins"},
		{name: "origins", args: append(up, "--allowed-origins", "https://app.example.com,https://*.example.com")},
		{name: "query param that needs escaping", args: append(up, "--token-query-param", "a b"), flag: "--token-query-param"},
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
		{name: "hmac algorithm for a jwks url", args: append(up, "--jwks-url", "https://idp.example/jwks", "--jwt-algorithms", "HS256"), flag: "--jwt-algorithms"},
		{name: "rsa algorithm for a jwks url", args: append(up, "--jwks-url", "https://idp.example/jwks", "--jwt-algorithms", "RS256")},
		{name: "hmac and rsa for a secret and a jwks url", args: append(up, "--jwks-url", "https://idp.example/jwks", "--jwt-hmac-secret-file", secret, "--jwt-algorithms", "HS256,RS256")},
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
	for in, want := range map[string]int64{"0": 0, "1024": 1024, "1KiB": 1024, "16KiB": 16 << 10, "1MiB": 1 << 20, "2 MiB": 2 << 20, "1GiB": 1 << 30, "1gib": 1 << 30, "512B": 512} {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "1XB", "1.5MiB", "2 MB", "1kb", "1M", "1G"} {
		if _, err := parseBytes(in); err == nil {
			t.Errorf("parseBytes(%q) succeeded", in)
		}
	}
}

// runLine runs the app with args and env and returns its exit code and the
// one line it printed (its error), as main would.
func runLine(t *testing.T, env map[string]string, args ...string) (int, string) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	err := newApp().Run(append([]string{"wsgate"}, args...))
	switch ec, ok := err.(cli.ExitCoder); {
	case err == nil:
		return 0, ""
	case ok:
		return ec.ExitCode(), err.Error()
	default:
		return 1, err.Error()
	}
}

// TestConfigErrorsSuggest: a value in a shape people often write gets a
// line that says what to write instead.
func TestConfigErrorsSuggest(t *testing.T) {
	up := []string{"--upstream", "http://x:1"}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want []string // substrings of the one line
	}{
		{"duration without a unit", append(up, "--idle-timeout", "5"), nil, []string{"--idle-timeout", `"5"`, "5s"}},
		{"duration without a unit from env", up, map[string]string{"WSGATE_USER_BLOCK": "30"}, []string{"--user-block", "WSGATE_USER_BLOCK", "30s"}},
		{"duration with a bad unit", append(up, "--ping-interval", "5sec"), nil, []string{"--ping-interval", "like 5s, 250ms or 1m30s"}},
		{"integer", append(up, "--max-conns", "lots"), nil, []string{"--max-conns", "whole number"}},
		{"ambiguous size", append(up, "--max-message-bytes", "1MB"), nil, []string{"--max-message-bytes", "ambiguous", "1MiB", "1000000"}},
		{"ambiguous size from env", up, map[string]string{"WSGATE_MAX_HEADER_BYTES": "8kb"}, []string{"--max-header-bytes", "ambiguous", "8KiB"}},
		{"redis url without a scheme", append(up, "--redis-url", "redis-master:6379"), nil, []string{"--redis-url", "want redis://host:port", `"redis-master:6379"`}},
		{"redis url without a scheme, with a password", append(up, "--redis-url", ":s3cret@redis-master:6379"), nil, []string{"--redis-url", "want redis://host:port"}},
		{"unknown flag", append(up, "--user-rates", "5/1s"), nil, []string{"--user-rates", "--user-rate"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, line := runLine(t, tc.env, append([]string{"check-config"}, tc.args...)...)
			if code != exitBadConfig || strings.Contains(line, "\n") || strings.Contains(line, "s3cret") {
				t.Fatalf("exit %d %q: want exit 2 and one line without the secret", code, line)
			}
			for _, w := range tc.want {
				if !strings.Contains(line, w) {
					t.Errorf("%q lacks %q", line, w)
				}
			}
		})
	}
}

// TestUnknownEnv: a WSGATE_* variable that is no flag's is a typo (the
// gate would otherwise run without what it says, e.g. with auth off): it is
// refused, naming the variable and the flag it was probably meant for. The
// variables Kubernetes derives from Services named wsgate... are not flags
// and are left alone.
func TestUnknownEnv(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string // empty: accepted
	}{
		{"typo of a _FILE flag", map[string]string{"WSGATE_JWT_HMAC_SECRET": "hunter2"}, []string{"WSGATE_JWT_HMAC_SECRET", "WSGATE_JWT_HMAC_SECRET_FILE"}},
		{"misspelt", map[string]string{"WSGATE_USER_RATES": "5/1s"}, []string{"WSGATE_USER_RATES", "WSGATE_USER_RATE"}},
		{"nothing close", map[string]string{"WSGATE_FROBNICATE": "1"}, []string{"WSGATE_FROBNICATE", "--help"}},
		{"service links", map[string]string{"WSGATE_SERVICE_HOST": "10.0.0.1", "WSGATE_PORT_80_TCP_ADDR": "10.0.0.1", "WSGATE_REDIS_PORT": "tcp://10.0.0.2:6379"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, line := runLine(t, tc.env, "check-config", "--upstream", "http://x:1")
			if tc.want == nil {
				if code != 0 {
					t.Fatalf("exit %d %q, want 0", code, line)
				}
				return
			}
			if code != exitBadConfig || strings.Contains(line, "\n") || strings.Contains(line, "hunter2") {
				t.Fatalf("exit %d %q: want exit 2 and one line without the value", code, line)
			}
			for _, w := range tc.want {
				if !strings.Contains(line, w) {
					t.Errorf("%q lacks %q", line, w)
				}
			}
		})
	}
}

// TestFlagsBeforeSubcommand: flags written before check-config or demo
// count, as if written after it; after it they win.
func TestFlagsBeforeSubcommand(t *testing.T) {
	if code, line := runLine(t, nil, "--upstream", "http://x:1", "check-config"); code != 0 {
		t.Errorf("--upstream before check-config: exit %d %q, want 0", code, line)
	}
	if code, line := runLine(t, nil, "--upstream", "http://x:1", "--user-rate", "fast", "check-config"); code != exitBadConfig || !strings.Contains(line, "--user-rate") {
		t.Errorf("a bad --user-rate before check-config: exit %d %q, want 2 naming --user-rate", code, line)
	}
	if code, line := runLine(t, nil, "--user-rate", "fast", "check-config", "--upstream", "http://x:1", "--user-rate", "5/1s"); code != 0 {
		t.Errorf("--user-rate after check-config should win: exit %d %q", code, line)
	}
	if code, line := runLine(t, nil, "--trusted-proxies", "10.0.0.0/8", "--trusted-proxies", "10.0.0.0/99", "check-config", "--upstream", "http://x:1"); code != exitBadConfig || !strings.Contains(line, "--trusted-proxies") {
		t.Errorf("repeated flag before check-config: exit %d %q, want 2 naming --trusted-proxies", code, line)
	}
}

// TestRequireAuth: --require-auth refuses a configuration without keys, so
// that a key source lost on the way (a renamed variable, a dropped flag)
// stops the gate instead of running it with every client anonymous.
func TestRequireAuth(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := []string{"check-config", "--upstream", "http://x:1", "--require-auth"}
	if code, line := runLine(t, nil, up...); code != exitBadConfig || !strings.Contains(line, "--require-auth") || !strings.Contains(line, "--jwt-hmac-secret-file") {
		t.Errorf("no keys: exit %d %q, want 2 naming --require-auth and the key flags", code, line)
	}
	if code, line := runLine(t, nil, append(up, "--jwt-hmac-secret-file", secret)...); code != 0 {
		t.Errorf("with a secret: exit %d %q, want 0", code, line)
	}
}

// TestRedisRequired: --redis-required needs --redis-url, and keeps /readyz
// at 503 while Redis is not reachable, whatever --failure-mode says.
func TestRedisRequired(t *testing.T) {
	if code, line := runLine(t, nil, "check-config", "--upstream", "http://x:1", "--redis-required"); code != exitBadConfig || !strings.Contains(line, "--redis-required") {
		t.Errorf("without --redis-url: exit %d %q, want 2 naming --redis-required", code, line)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "redis://" + ln.Addr().String()
	ln.Close()
	lc := limit.Config{RedisURL: closed, FailureMode: limit.FailLocal}
	lim, err := limit.New(lc)
	if err != nil {
		t.Fatal(err)
	}
	defer lim.Close()
	var ready atomic.Bool
	ready.Store(true)
	if !readiness(&ready, lc, false, lim)() {
		t.Error("failure mode local, Redis not required: want ready while Redis is down")
	}
	if readiness(&ready, lc, true, lim)() {
		t.Error("--redis-required: want not ready while Redis is down")
	}
}

func TestAdminArgsLast(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"wsgate admin block user:a --for 10m --reason x", "wsgate admin block --for 10m --reason x -- user:a"},
		{"wsgate admin inspect user:a --json", "wsgate admin inspect --json -- user:a"},
		{"wsgate admin block --for=10m user:a", "wsgate admin block --for=10m -- user:a"},
		{"wsgate admin inspect -- --odd-key", "wsgate admin inspect -- --odd-key"},
		{"wsgate admin revocations", "wsgate admin revocations"},
		{"wsgate --listen :1 admin", "wsgate --listen :1 admin"},
		{"wsgate rules check f --x", "wsgate rules check f --x"},
	} {
		if got := strings.Join(adminArgsLast(strings.Fields(tc.in)), " "); got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestAdminClean(t *testing.T) {
	if got := clean("/ws/room-1 é"); got != "/ws/room-1 é" {
		t.Errorf("plain text changed: %q", got)
	}
	for _, s := range []string{"/ws\x1b[31mRED", "a\tb", "a\nFAKE ROW"} {
		if got := clean(s); strings.ContainsAny(got, "\x1b\t\n") {
			t.Errorf("%q printed as %q", s, got)
		}
	}
}

// TestWarnUnsafe: settings that work but leave a door open are named at
// start.
func TestWarnUnsafe(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string // "" = no warning
	}{
		{[]string{"--token-cookie", "session"}, "--token-cookie without --allowed-origins"},
		{[]string{"--token-cookie", "session", "--allowed-origins", "https://app.example.com"}, ""},
		{[]string{"--trusted-proxies", "0.0.0.0/0"}, "trusts every peer"},
		{[]string{"--trusted-proxies", "10.0.0.0/8"}, ""},
	} {
		var cfg *config
		app := newApp()
		app.Commands = nil
		app.Action = func(c *cli.Context) error {
			var err error
			cfg, err = configFrom(c, false)
			return err
		}
		if err := app.Run(append([]string{"wsgate", "--upstream", "http://x:1"}, tt.args...)); err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		warnUnsafe(slog.New(slog.NewTextHandler(&out, nil)), cfg)
		if tt.want == "" && out.Len() > 0 || tt.want != "" && !strings.Contains(out.String(), tt.want) {
			t.Errorf("%v: warned %q, want %q", tt.args, out.String(), tt.want)
		}
	}
}
