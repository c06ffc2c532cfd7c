// Package policy is the gate's rate-limiting policy: which rules apply to a
// handshake or a message, under which key, with which limits, and what the
// gate does when one refuses. A policy comes from a rules file (Load, Parse)
// or from the four rule flags (FromFlags), which compile to the same model.
//
// The model: classes name kinds of messages, recognised from a message's
// bytes as they pass (a socket.io event name, a JSON field, a prefix:
// Classify, ClassOf, ClassScan); tiers are
// chosen from the verified token's claims and replace a rule's limits;
// deny and allow lists match client IPs and subjects at the handshake;
// rules count messages, payload bytes or handshakes per key (the user, the
// client IP, the connection, a claim or a header), each against one or
// more windows checked together. Every matching rule applies; an exempt
// tier or the allow list skips every rule; a shadow rule is checked and
// logged but never refuses, and never stops an enforced rule that also
// matches from being checked.
//
// This package decides nothing by itself: it names what applies (Match) so
// that the limiter can count it. docs/ARCHITECTURE.md places it in the gate.
package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"slices"
	"strings"
	"time"
)

// ErrInvalid is wrapped by every error about a policy's content.
var ErrInvalid = errors.New("invalid rules")

// MaxRules bounds the rules of one policy: each rule is a label value of
// the gate's metrics.
const MaxRules = 64

// MaxClasses bounds the classes of one policy: a message's scan past its
// first bytes (ClassScan) keeps a bit per class.
const MaxClasses = 64

// Count is what a rule counts.
type Count int

const (
	// CountMessages counts data messages (the default).
	CountMessages Count = iota
	// CountBytes counts the payload bytes of data messages, from their
	// frame headers.
	CountBytes
	// CountHandshakes counts WebSocket handshakes (and engine.io session
	// opens).
	CountHandshakes
)

var countNames = []string{"messages", "bytes", "handshakes"}

func (c Count) String() string { return countNames[c] }

// KeyKind is what a rule's counter is kept per.
type KeyKind int

const (
	// KeyUser is the verified identity (issuer and subject), or the client
	// IP when the connection has no token.
	KeyUser KeyKind = iota
	// KeyIP is the client IP.
	KeyIP
	// KeyConnection is one WebSocket connection.
	KeyConnection
	// KeyClaim is the value of a claim of the verified token.
	KeyClaim
	// KeyHeader is the value of a request header of the handshake.
	KeyHeader
)

// Key is what a rule's counter is kept per: a kind, and the claim or header
// name for KeyClaim and KeyHeader (a claim path may go into nested objects:
// "realm_access.roles").
type Key struct {
	Kind KeyKind
	Name string
}

// ParseKey parses "user", "ip", "connection", "claim:<name>" or
// "header:<name>".
func ParseKey(s string) (Key, error) {
	switch s {
	case "user":
		return Key{Kind: KeyUser}, nil
	case "ip":
		return Key{Kind: KeyIP}, nil
	case "connection":
		return Key{Kind: KeyConnection}, nil
	}
	kind, name, ok := strings.Cut(s, ":")
	switch {
	case ok && kind == "claim" && name != "" && !slices.Contains(splitPath(name), ""):
		return Key{Kind: KeyClaim, Name: name}, nil
	case ok && kind == "header" && name != "" && validHeaderName(name):
		return Key{Kind: KeyHeader, Name: strings.ToLower(name)}, nil
	}
	return Key{}, fmt.Errorf("key %q: want user, ip, connection, claim:<name> or header:<name>", s)
}

func (k Key) String() string {
	switch k.Kind {
	case KeyIP:
		return "ip"
	case KeyConnection:
		return "connection"
	case KeyClaim:
		return "claim:" + k.Name
	case KeyHeader:
		return "header:" + k.Name
	}
	return "user"
}

// validHeaderName reports whether s is an HTTP field name (RFC 9110 token).
func validHeaderName(s string) bool {
	for i := range len(s) {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return s != ""
}

// Algorithm is how a rule's windows count.
type Algorithm int

const (
	// Fixed windows open at a key's first counted event (the semantics of
	// rate-limiter-flexible); the default.
	Fixed Algorithm = iota
	// GCRA is a smooth rate with a burst (the generic cell rate
	// algorithm, as go-redis/redis_rate): "100/10s" allows one event every
	// 100 ms on average and up to Burst at once.
	GCRA
)

func (a Algorithm) String() string {
	if a == GCRA {
		return "gcra"
	}
	return "fixed"
}

// Action is what the gate does with a refused message.
type Action int

const (
	// Close sends the 429 frame, then closes with 4008 (the default).
	Close Action = iota
	// Drop sends the 429 frame and does not relay the message; the
	// connection stays open (until CloseAfter drops in one window).
	Drop
)

func (a Action) String() string {
	if a == Drop {
		return "drop"
	}
	return "close"
}

// Window is one limit of a rule: at most Limit units (messages, bytes or
// handshakes) per Per.
type Window struct {
	Limit int64
	Per   time.Duration
}

func (w Window) String() string { return formatWindow(w, false) }

// Rule is one rule of a policy.
type Rule struct {
	// Name identifies the rule in refusals, logs and metrics; counters of a
	// rule whose name and key are unchanged survive a reload.
	Name string
	// Class limits a message rule to the messages of one class; "" means
	// every data message.
	Class string
	// Path limits the rule to handshakes and connections whose request
	// path matches this pattern (path.Match: "/rooms/*"); "" means every
	// path.
	Path  string
	Key   Key
	Count Count
	// Limits are checked together: the first exceeded refuses, and a
	// refused event counts against none of them.
	Limits []Window
	// Tiers replace Limits for the clients of a tier.
	Tiers map[string][]Window
	// Block is how long a key stays refused after a refusal; with several
	// entries, each refusal within ResetStrikes of the previous one moves to
	// the next (the last repeats). Empty: no block, the key is refused
	// until its window ends.
	Block []time.Duration
	// ResetStrikes is the quiet time after which a key's refusals are
	// forgotten and its next block is Block[0]; 0 without escalation.
	ResetStrikes time.Duration
	Algorithm    Algorithm
	// Burst is a GCRA rule's burst; 0 means the window's Limit.
	Burst  int64
	Action Action
	// CloseAfter closes the connection (as Close does) at the CloseAfter-th
	// drop inside one window of the rule; 0 never closes.
	CloseAfter int
	// Shadow rules are checked and logged, never enforced.
	Shadow bool
	// Line is where the rule starts in its file; 0 for the flag rules.
	Line int
}

// Handshakes reports whether the rule counts handshakes rather than messages.
func (r *Rule) Handshakes() bool { return r.Count == CountHandshakes }

// LimitsFor returns the limits that apply to a client of tier ("" for
// none).
func (r *Rule) LimitsFor(tier string) []Window {
	if ws, ok := r.Tiers[tier]; ok && tier != "" {
		return ws
	}
	return r.Limits
}

// AppliesToPath reports whether the rule covers request path p.
func (r *Rule) AppliesToPath(p string) bool {
	if r.Path == "" {
		return true
	}
	ok, _ := path.Match(r.Path, p)
	return ok
}

// Class names the messages that match one matcher.
type Class struct {
	Name string
	// Exactly one matcher is set.
	SocketIOEvent string   // the event name of a socket.io EVENT packet, any namespace
	FieldPath     []string // a JSON member (keys into nested objects) ...
	FieldEquals   string   // ... whose string value, or literal, is this
	Prefix        string   // the message's first bytes
	// Unlimited messages pass every rule uncounted.
	Unlimited bool
	Line      int
}

// Matches reports whether a text message that starts with head (the first
// bytes available, unmasked) is of the class, in the reading that decides
// it (the last of duplicate names, exact): a first guess where the bytes
// after head can change it (ClassScan), the answer where they cannot.
func (c *Class) Matches(head []byte) bool {
	switch {
	case c.SocketIOEvent != "":
		return EventEquals(head, c.SocketIOEvent)
	case len(c.FieldPath) > 0:
		eq, whole := fieldEquals(head, c.FieldPath, c.FieldEquals)
		// A first guess never passes a message uncounted: a member further
		// on could name it otherwise; counting one too many is the safe
		// error.
		return eq && (whole || !c.Unlimited)
	}
	return len(head) >= len(c.Prefix) && string(head[:len(c.Prefix)]) == c.Prefix
}

// Condition selects a tier from the verified token's claims.
type Condition struct {
	// Claim is the claim's path: its name, or keys into nested objects.
	Claim []string
	// Exactly one of the following is set.
	Equals   *string  // the claim is this string
	In       []string // the claim is one of these strings
	Contains *string  // the claim is an array holding this string
	Exists   bool     // the claim is present (and not null)
}

// Tier is a class of clients chosen by their token's claims: the first tier
// whose condition holds is the client's.
type Tier struct {
	Name string
	When Condition
	// Exempt clients skip every rule (they are still counted in metrics).
	Exempt bool
	Line   int
}

// List matches clients by IP and by subject.
type List struct {
	CIDRs    []netip.Prefix
	Subjects []string
}

// Empty reports whether the list matches nothing.
func (l *List) Empty() bool { return len(l.CIDRs) == 0 && len(l.Subjects) == 0 }

// Has reports whether ip or subject is on the list.
func (l *List) Has(ip netip.Addr, subject string) bool {
	ip = ip.Unmap()
	for _, p := range l.CIDRs {
		if p.Contains(ip) {
			return true
		}
	}
	return subject != "" && slices.Contains(l.Subjects, subject)
}

// Policy is a compiled, validated set of rules.
type Policy struct {
	Classes []Class
	Tiers   []Tier
	Deny    List // refused at the handshake (403)
	Allow   List // exempt from every rule
	Rules   []Rule
	// Source is the file the policy came from, or "flags".
	Source string
	// Hash is the SHA-256 of the file, in hex; "" for the flags.
	Hash string
}

// Rule returns the rule named name, or nil.
func (p *Policy) Rule(name string) *Rule {
	for i := range p.Rules {
		if p.Rules[i].Name == name {
			return &p.Rules[i]
		}
	}
	return nil
}

// Classify returns the index of the first class a text message that starts
// with head matches, or -1.
func (p *Policy) Classify(head []byte) int {
	for i := range p.Classes {
		if p.Classes[i].Matches(head) {
			return i
		}
	}
	return -1
}

// TierOf returns the index of the first tier whose condition the claims
// meet, or -1.
func (p *Policy) TierOf(claims map[string]any) int {
	for i := range p.Tiers {
		if p.Tiers[i].When.Holds(claims) {
			return i
		}
	}
	return -1
}

// NeedsClaims reports whether the policy reads token claims beyond the
// identity: for tiers or claim keys.
func (p *Policy) NeedsClaims() bool {
	if len(p.Tiers) > 0 {
		return true
	}
	for i := range p.Rules {
		if p.Rules[i].Key.Kind == KeyClaim {
			return true
		}
	}
	return false
}
