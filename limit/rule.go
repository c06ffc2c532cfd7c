package limit

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Sentinel errors returned (wrapped) by ParseRule, ParseFailureMode,
// ParseMode and New.
var (
	ErrBadRule        = errors.New("bad rule")
	ErrBadFailureMode = errors.New("bad failure mode")
	ErrBadMode        = errors.New("bad limit mode")
	ErrBadConfig      = errors.New("bad limiter config")
)

// Rule limits events per fixed window: at most Limit events are allowed in a
// window that opens at the first counted event and lasts Window. The event
// after the Limit-th one inside a window is refused and, when Block > 0, the
// key is blocked for Block; when the block ends the budget is full again.
// The zero Rule is disabled.
type Rule struct {
	Limit  int
	Window time.Duration
	Block  time.Duration
}

// ParseRule parses the rate part of a rule: "N/duration" such as "100/10s",
// "30/1m" or "5/500ms"; a bare unit counts as one of it ("10/s"). "0" (or any
// "0/duration") is the disabled rule. The block duration is set separately.
// Errors wrap ErrBadRule.
func ParseRule(s string) (Rule, error) {
	bad := func(reason string) (Rule, error) {
		return Rule{}, fmt.Errorf("%w %q: %s", ErrBadRule, s, reason)
	}
	t := strings.TrimSpace(s)
	if t == "0" {
		return Rule{}, nil
	}
	n, w, ok := strings.Cut(t, "/")
	if !ok {
		return bad(`want "N/duration" or "0"`)
	}
	limit, err := strconv.Atoi(strings.TrimSpace(n))
	if err != nil || limit < 0 {
		return bad("limit must be a non-negative integer")
	}
	w = strings.TrimSpace(w)
	d := w
	if d != "" && (d[0] < '0' || d[0] > '9') && d[0] != '.' {
		d = "1" + d // "10/s" means ten per second
	}
	window, err := time.ParseDuration(d)
	if err != nil {
		return bad(fmt.Sprintf("window %q is not a duration", w))
	}
	if limit == 0 {
		return Rule{}, nil
	}
	r := Rule{Limit: limit, Window: window}
	if err := r.validate(); err != nil {
		return bad(err.Error())
	}
	return r, nil
}

// validate checks an enabled rule. Redis expiries have millisecond
// resolution, so windows and blocks must be whole milliseconds.
func (r Rule) validate() error {
	switch {
	case r.Limit < 0:
		return errors.New("limit must not be negative")
	case r.Limit == 0:
		return nil
	case r.Window < time.Millisecond || r.Window%time.Millisecond != 0:
		return errors.New("window must be a positive whole number of milliseconds")
	case r.Block < 0 || r.Block%time.Millisecond != 0:
		return errors.New("block must be zero or a whole number of milliseconds")
	}
	return nil
}

// Enabled reports whether the rule limits anything.
func (r Rule) Enabled() bool { return r.Limit > 0 }

// String returns the rule as ParseRule reads it ("100/10s", "0" when
// disabled), followed by " block 5s" when the rule blocks.
func (r Rule) String() string {
	if !r.Enabled() {
		return "0"
	}
	s := strconv.Itoa(r.Limit) + "/" + r.Window.String()
	if r.Block > 0 {
		s += " block " + r.Block.String()
	}
	return s
}

// Rules are the four rules a Limiter enforces.
type Rules struct {
	UserMessages Rule // each data message of an identity; its block also refuses handshakes
	IPMessages   Rule // each data message of a client IP; its block also refuses handshakes
	UserConns    Rule // each handshake of an identity; Block is ignored
	IPConns      Rule // each handshake of a client IP; Block is ignored
}

// FailureMode says what decides while Redis is unreachable or slower than
// Config.Timeout.
type FailureMode int

const (
	// FailLocal decides with an in-process memory store with the same rules.
	FailLocal FailureMode = iota
	// FailOpen allows every event.
	FailOpen
	// FailClosed refuses every event for one second.
	FailClosed
)

// ParseFailureMode parses "local", "open" or "closed". Errors wrap
// ErrBadFailureMode.
func ParseFailureMode(s string) (FailureMode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "local":
		return FailLocal, nil
	case "open":
		return FailOpen, nil
	case "closed":
		return FailClosed, nil
	}
	return 0, fmt.Errorf("%w %q: want local, open or closed", ErrBadFailureMode, s)
}

// String returns "local", "open" or "closed".
func (m FailureMode) String() string {
	switch m {
	case FailLocal:
		return "local"
	case FailOpen:
		return "open"
	case FailClosed:
		return "closed"
	}
	return "FailureMode(" + strconv.Itoa(int(m)) + ")"
}

// Mode says how a Limiter's message rules use Redis.
type Mode int

const (
	// ModeExact counts every message in Redis.
	ModeExact Mode = iota
	// ModeLease reserves slices of each key's window budget in Redis and
	// decides locally until a slice is spent: the flag message rules, and a
	// rules file's rules that count messages or bytes, in fixed or GCRA
	// windows. Handshakes stay exact.
	ModeLease
)

// ParseMode parses "exact" or "lease". Errors wrap ErrBadMode.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "exact":
		return ModeExact, nil
	case "lease":
		return ModeLease, nil
	}
	return 0, fmt.Errorf("%w %q: want exact or lease", ErrBadMode, s)
}

// String returns "exact" or "lease".
func (m Mode) String() string {
	switch m {
	case ModeExact:
		return "exact"
	case ModeLease:
		return "lease"
	}
	return "Mode(" + strconv.Itoa(int(m)) + ")"
}
