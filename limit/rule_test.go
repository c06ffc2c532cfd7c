package limit

import (
	"errors"
	"testing"
	"time"
)

func TestParseRule(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    Rule
		wantErr bool
	}{
		{in: "100/10s", want: Rule{Limit: 100, Window: 10 * time.Second}},
		{in: "30/1m", want: Rule{Limit: 30, Window: time.Minute}},
		{in: "5/500ms", want: Rule{Limit: 5, Window: 500 * time.Millisecond}},
		{in: " 10 / s ", want: Rule{Limit: 10, Window: time.Second}},
		{in: "60/m", want: Rule{Limit: 60, Window: time.Minute}},
		{in: "1/1h30m", want: Rule{Limit: 1, Window: 90 * time.Minute}},
		{in: "0", want: Rule{}},
		{in: "0/10s", want: Rule{}},
		{in: "", wantErr: true},
		{in: "10", wantErr: true},
		{in: "10/x", wantErr: true},
		{in: "x/10s", wantErr: true},
		{in: "-1/10s", wantErr: true},
		{in: "10/0s", wantErr: true},
		{in: "10/-1s", wantErr: true},
		{in: "10/1500us", wantErr: true},
		{in: "10/10s/2", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := ParseRule(tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrBadRule) {
					t.Fatalf("ParseRule(%q) = %v, %v; want an ErrBadRule", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseRule(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			if got.Enabled() != (tt.want.Limit > 0) {
				t.Fatalf("Enabled() = %v", got.Enabled())
			}
			again, err := ParseRule(got.String())
			if err != nil || again != got {
				t.Fatalf("ParseRule(%q) = %+v, %v; want it to round-trip", got.String(), again, err)
			}
		})
	}
}

func TestParseRuleErrorMessage(t *testing.T) {
	t.Parallel()
	_, err := ParseRule("10/x")
	want := `bad rule "10/x": window "x" is not a duration`
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %s", err, want)
	}
}

func TestRuleString(t *testing.T) {
	t.Parallel()
	for r, want := range map[Rule]string{
		{}:                                     "0",
		{Limit: 100, Window: 10 * time.Second}: "100/10s",
		{Limit: 100, Window: 10 * time.Second, Block: 5 * time.Second}: "100/10s block 5s",
	} {
		if got := r.String(); got != want {
			t.Errorf("%+v.String() = %q, want %q", r, got, want)
		}
	}
}

func TestParseFailureMode(t *testing.T) {
	t.Parallel()
	for _, m := range []FailureMode{FailLocal, FailOpen, FailClosed} {
		got, err := ParseFailureMode(m.String())
		if err != nil || got != m {
			t.Errorf("ParseFailureMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	if _, err := ParseFailureMode("maybe"); !errors.Is(err, ErrBadFailureMode) {
		t.Errorf("ParseFailureMode(maybe) err = %v", err)
	}
	var zero FailureMode
	if zero != FailLocal {
		t.Error("the zero FailureMode is not FailLocal")
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  Config
		want error
	}{
		{"negative limit", Config{Rules: Rules{UserMessages: Rule{Limit: -1}}}, ErrBadRule},
		{"no window", Config{Rules: Rules{IPMessages: Rule{Limit: 1}}}, ErrBadRule},
		{"negative block", Config{Rules: Rules{UserMessages: Rule{Limit: 1, Window: time.Second, Block: -time.Second}}}, ErrBadRule},
		{"sub-ms block", Config{Rules: Rules{UserMessages: Rule{Limit: 1, Window: time.Second, Block: time.Microsecond}}}, ErrBadRule},
		{"failure mode", Config{FailureMode: 7}, ErrBadFailureMode},
		{"timeout", Config{Timeout: -time.Second}, ErrBadConfig},
		{"prefix", Config{KeyPrefix: "a{b"}, ErrBadConfig},
		{"url", Config{RedisURL: "http://x"}, ErrBadConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l, err := New(tt.cfg)
			if !errors.Is(err, tt.want) {
				if l != nil {
					l.Close()
				}
				t.Fatalf("New err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestSafeID(t *testing.T) {
	t.Parallel()
	long := string(make([]byte, maxIDLen+1))
	for _, id := range []string{"", "a{b", "}", long, "sha256:abc"} {
		got := safeID(id)
		if len(got) != len("sha256:")+64 || got == id {
			t.Errorf("safeID(%q) = %q, want a hash", id, got)
		}
	}
	for _, id := range []string{"anon:10.0.0.7", "2001:db8::/64", "0123abcd"} {
		if got := safeID(id); got != id {
			t.Errorf("safeID(%q) = %q, want it unchanged", id, got)
		}
	}
	if safeID("a{") == safeID("a}") {
		t.Error("different ids hash alike")
	}
}
