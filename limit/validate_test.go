package limit

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	ok := Rule{Limit: 10, Window: time.Second, Block: 5 * time.Second}
	tests := []struct {
		name     string
		cfg      Config
		field    string // "" = valid
		sentinel error
	}{
		{name: "zero", cfg: Config{}},
		{name: "full", cfg: Config{Rules: Rules{UserMessages: ok, IPMessages: ok, UserConns: ok, IPConns: ok},
			KeyPrefix: "chat-rate", RedisURL: "redis://127.0.0.1:6379/0", FailureMode: FailClosed, Timeout: time.Millisecond,
			Mode: ModeLease, LeaseSize: 3, IPMaxConns: 5, ConnTTL: time.Minute}},
		{name: "sub-millisecond block", cfg: Config{Rules: Rules{UserMessages: Rule{Limit: 10, Window: time.Second, Block: 1500 * time.Microsecond}}},
			field: "Rules.UserMessages.Block", sentinel: ErrBadRule},
		{name: "negative block", cfg: Config{Rules: Rules{IPMessages: Rule{Limit: 10, Window: time.Second, Block: -time.Second}}},
			field: "Rules.IPMessages.Block", sentinel: ErrBadRule},
		{name: "sub-millisecond window", cfg: Config{Rules: Rules{UserConns: Rule{Limit: 10, Window: 1500 * time.Microsecond}}},
			field: "Rules.UserConns.Window", sentinel: ErrBadRule},
		{name: "zero window", cfg: Config{Rules: Rules{IPConns: Rule{Limit: 10}}},
			field: "Rules.IPConns.Window", sentinel: ErrBadRule},
		{name: "negative limit", cfg: Config{Rules: Rules{UserMessages: Rule{Limit: -1, Window: time.Second}}},
			field: "Rules.UserMessages.Limit", sentinel: ErrBadRule},
		{name: "failure mode", cfg: Config{FailureMode: FailClosed + 1}, field: "FailureMode", sentinel: ErrBadFailureMode},
		{name: "mode", cfg: Config{Mode: ModeLease + 1}, field: "Mode", sentinel: ErrBadMode},
		{name: "lease size", cfg: Config{LeaseSize: -1}, field: "LeaseSize", sentinel: ErrBadConfig},
		{name: "ip max conns", cfg: Config{IPMaxConns: -1}, field: "IPMaxConns", sentinel: ErrBadConfig},
		{name: "conn ttl", cfg: Config{ConnTTL: time.Millisecond}, field: "ConnTTL", sentinel: ErrBadConfig},
		{name: "timeout", cfg: Config{Timeout: -time.Millisecond}, field: "Timeout", sentinel: ErrBadConfig},
		{name: "prefix brace", cfg: Config{KeyPrefix: "a{b"}, field: "KeyPrefix", sentinel: ErrBadConfig},
		{name: "prefix space", cfg: Config{KeyPrefix: "a b"}, field: "KeyPrefix", sentinel: ErrBadConfig},
		{name: "redis url", cfg: Config{RedisURL: "redis://:s3cret@host:port/0"}, field: "RedisURL", sentinel: ErrBadConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			var ce *ConfigError
			switch {
			case tt.field == "" && err != nil:
				t.Fatalf("Validate: %v, want nil", err)
			case tt.field == "":
			case !errors.As(err, &ce) || ce.Field != tt.field || !errors.Is(err, tt.sentinel):
				t.Fatalf("Validate: %v, want a *ConfigError on %s wrapping %v", err, tt.field, tt.sentinel)
			case strings.Contains(err.Error(), "s3cret"):
				t.Fatalf("the error quotes the Redis password: %v", err)
			}
			if tt.cfg.RedisURL != "" && tt.field == "" {
				return // New would connect
			}
			// New validates with Validate: it refuses exactly the same.
			lim, nerr := New(tt.cfg)
			if lim != nil {
				lim.Close()
			}
			if (nerr == nil) != (tt.field == "") || nerr != nil && nerr.Error() != err.Error() {
				t.Fatalf("New: %v, but Validate: %v", nerr, err)
			}
		})
	}
}
