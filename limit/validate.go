package limit

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/redis/rueidis"
)

// ConfigError is a Config field that Validate refuses.
type ConfigError struct {
	// Field is the refused field as a Go selector on Config: "Timeout",
	// "Rules.UserMessages.Block".
	Field string
	// Err says why; it wraps ErrBadRule, ErrBadFailureMode, ErrBadMode or
	// ErrBadConfig.
	Err error
}

func (e *ConfigError) Error() string { return "limit: " + e.Field + ": " + e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// Validate reports, as a *ConfigError, the first field of c that New
// refuses; nil when New accepts c. It does no I/O and starts nothing, so a
// configuration can be checked without running it. Redis stores expiries in
// whole milliseconds, so a rule's window and block must be whole
// milliseconds. The key prefix may not hold '{' or '}' (they would break
// the keys' Cluster hash tags) nor white space.
func (c Config) Validate() error {
	bad := func(field string, sentinel error, format string, a ...any) error {
		return &ConfigError{Field: field, Err: fmt.Errorf("%w: "+format, append([]any{sentinel}, a...)...)}
	}
	if c.FailureMode < FailLocal || c.FailureMode > FailClosed {
		return bad("FailureMode", ErrBadFailureMode, "%d", int(c.FailureMode))
	}
	if c.Mode != ModeExact && c.Mode != ModeLease {
		return bad("Mode", ErrBadMode, "%d", int(c.Mode))
	}
	if c.LeaseSize < 0 {
		return bad("LeaseSize", ErrBadConfig, "must not be negative, got %d", c.LeaseSize)
	}
	if c.IPMaxConns < 0 {
		return bad("IPMaxConns", ErrBadConfig, "must not be negative, got %d", c.IPMaxConns)
	}
	if c.ConnTTL != 0 && c.ConnTTL < minConnTTL {
		return bad("ConnTTL", ErrBadConfig, "must be 0 or at least %v, got %v", minConnTTL, c.ConnTTL)
	}
	if c.Timeout < 0 {
		return bad("Timeout", ErrBadConfig, "must not be negative, got %v", c.Timeout)
	}
	if strings.ContainsAny(c.KeyPrefix, "{} \t\r\n\v\f") {
		return bad("KeyPrefix", ErrBadConfig, "must not contain '{', '}' or white space, got %q", c.KeyPrefix)
	}
	for _, r := range []struct {
		field string
		rule  Rule
	}{
		{"Rules.UserMessages", c.Rules.UserMessages},
		{"Rules.IPMessages", c.Rules.IPMessages},
		{"Rules.UserConns", c.Rules.UserConns},
		{"Rules.IPConns", c.Rules.IPConns},
	} {
		err := r.rule.validate()
		if err == nil {
			continue
		}
		switch {
		case r.rule.Limit < 0:
			return bad(r.field+".Limit", ErrBadRule, "%v, got %d", err, r.rule.Limit)
		case Rule{Limit: r.rule.Limit, Window: r.rule.Window}.validate() != nil:
			return bad(r.field+".Window", ErrBadRule, "%v, got %v", err, r.rule.Window)
		default:
			return bad(r.field+".Block", ErrBadRule, "%v, got %v", err, r.rule.Block)
		}
	}
	if c.RedisURL != "" {
		if _, err := rueidis.ParseURL(c.RedisURL); err != nil {
			// url.Parse's error quotes the URL, password included.
			if ue := (*url.Error)(nil); errors.As(err, &ue) {
				err = ue.Err
			}
			return bad("RedisURL", ErrBadConfig, "%v", err)
		}
	}
	return nil
}
