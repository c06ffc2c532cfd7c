package policy

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// example is the rules file of the policy reference: every feature once.
const example = `
classes:            # classify a text message from its first bytes
  - {name: chat,      socketio-event: "chat:send"}
  - {name: subscribe, json-field: {path: method, equals: subscribe}}
  - {name: heartbeat, json-field: {path: type, equals: ping}, unlimited: true}
tiers:              # chosen from the verified token's claims
  - {name: pro,     when: {claim: plan, in: [pro, enterprise]}}
  - {name: service, when: {claim: roles, contains: internal}, exempt: true}
deny:  {cidrs: [203.0.113.0/24], subjects: [mallory]}
allow: {cidrs: [10.1.0.0/16]}
rules:
  - {name: user-messages, key: user, limits: [100/10s], block: 5s, tiers: {pro: [1000/10s]}}
  - {name: chat, class: chat, key: user, limits: [5/1s, 60/1m], action: drop, close-after: 20}
  - {name: ip-bytes, key: ip, count: bytes, limits: [8MiB/10s], block: 30s}
  - {name: joins, path: "/rooms/*", count: handshakes, key: user, limits: [10/1m]}
  - {name: new-rule, key: user, limits: [50/10s], shadow: true}
  - name: repeat-offenders
    key: claim:tenant
    limits: 1000/1m
    algorithm: gcra
    burst: 50
    block: [5s, 1m, 10m]
`

func TestParseExample(t *testing.T) {
	p, err := Parse("rules.yaml", []byte(example))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Classes) != 3 || p.Classes[0].SocketIOEvent != "chat:send" ||
		!reflect.DeepEqual(p.Classes[1].FieldPath, []string{"method"}) || p.Classes[1].FieldEquals != "subscribe" ||
		!p.Classes[2].Unlimited || p.Classes[2].Line != 5 {
		t.Errorf("classes: %+v", p.Classes)
	}
	if len(p.Tiers) != 2 || !reflect.DeepEqual(p.Tiers[0].When.In, []string{"pro", "enterprise"}) ||
		*p.Tiers[1].When.Contains != "internal" || !p.Tiers[1].Exempt {
		t.Errorf("tiers: %+v", p.Tiers)
	}
	if !p.Deny.Has(netip.MustParseAddr("203.0.113.9"), "") || !p.Deny.Has(netip.MustParseAddr("192.0.2.1"), "mallory") ||
		p.Deny.Has(netip.MustParseAddr("192.0.2.1"), "alice") || !p.Allow.Has(netip.MustParseAddr("::ffff:10.1.2.3"), "") {
		t.Errorf("deny %+v allow %+v", p.Deny, p.Allow)
	}
	want := []Rule{
		{Name: "user-messages", Key: Key{Kind: KeyUser}, Limits: []Window{{100, 10 * time.Second}}, Block: []time.Duration{5 * time.Second},
			Tiers: map[string][]Window{"pro": {{1000, 10 * time.Second}}}, Line: 12},
		{Name: "chat", Class: "chat", Key: Key{Kind: KeyUser}, Limits: []Window{{5, time.Second}, {60, time.Minute}}, Action: Drop, CloseAfter: 20, Line: 13},
		{Name: "ip-bytes", Key: Key{Kind: KeyIP}, Count: CountBytes, Limits: []Window{{8 << 20, 10 * time.Second}}, Block: []time.Duration{30 * time.Second}, Line: 14},
		{Name: "joins", Path: "/rooms/*", Key: Key{Kind: KeyUser}, Count: CountHandshakes, Limits: []Window{{10, time.Minute}}, Line: 15},
		{Name: "new-rule", Key: Key{Kind: KeyUser}, Limits: []Window{{50, 10 * time.Second}}, Shadow: true, Line: 16},
		{Name: "repeat-offenders", Key: Key{Kind: KeyClaim, Name: "tenant"}, Limits: []Window{{1000, time.Minute}}, Algorithm: GCRA, Burst: 50,
			Block: []time.Duration{5 * time.Second, time.Minute, 10 * time.Minute}, ResetStrikes: time.Hour, Line: 17},
	}
	if !reflect.DeepEqual(p.Rules, want) {
		t.Errorf("rules:\n got %+v\nwant %+v", p.Rules, want)
	}
	if p.Source != "rules.yaml" || len(p.Hash) != 64 {
		t.Errorf("source %q hash %q", p.Source, p.Hash)
	}
	if !p.NeedsClaims() {
		t.Error("a policy with tiers needs claims")
	}
}

// TestParseErrors checks that each mistake is named with its line and
// column, and that every mistake of a file is reported, not the first.
func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"empty", "", []string{"rules.yaml: the file is empty"}},
		{"not yaml", "rules: [", []string{"rules.yaml: "}},
		{"no rules list", "classes: []", []string{"rules.yaml:1:1: the rules file has no rules: list"}},
		{"two documents", "rules: [{name: a, limits: 1/s}]\n---\nrules: [{name: b, limits: 1/s}]\n", []string{
			"rules.yaml:2:1: a rules file is one YAML document"}},
		{"alias", "rules:\n  - {name: a, limits: &l [1/s]}\n  - {name: b, limits: *l}\n", []string{
			"rules.yaml:3:23: YAML aliases (*l) are not supported"}},
		{"merge key", "rules:\n  - &base {name: a, limits: [1/s]}\n  - {<<: *base, name: b}\n", []string{
			"rules.yaml:3:6: YAML merge keys (<<) are not supported", "rules.yaml:3:10: YAML aliases (*base)"}},
		{"burst too long", "rules:\n  - {name: a, limits: [1/1s], algorithm: gcra, burst: 10000000000}\n", []string{
			`rule "a": burst 10000000000 is more than a year of the rate 1/1s: at most 31536000`}},
		{"top-level typo", "rule: []\n", []string{`rules.yaml:1:1: the rules file: unknown field "rule" (did you mean "rules"?)`}},
		{"field typo", "rules:\n  - {name: a, limts: [1/s]}\n", []string{
			`rules.yaml:2:15: a rule: unknown field "limts" (did you mean "limits"?)`,
			`rules.yaml:2:5: rule "a" needs limits`}},
		{"bad limit", "rules:\n  - name: a\n    limits: [100/10x, 0/1s, 5/0.5ms, 1MiB/1s]\n", []string{
			`rules.yaml:3:14: rule "a": limits: limit "100/10x": "10x" is not a duration`,
			`rules.yaml:3:23: rule "a": limits: limit "0/1s": the count must be at least 1`,
			`rules.yaml:3:29: rule "a": limits: limit "5/0.5ms": the window must be at least 1ms`,
			`rules.yaml:3:38: rule "a": limits: limit "1MiB/1s": the count must be a whole number`}},
		{"two limits per window", "rules:\n  - {name: a, limits: [1/s, 2/1s]}\n", []string{`rule "a": limits: two limits per 1s`}},
		{"unknown class and tier", "rules:\n  - {name: a, class: chat, limits: [1/s], tiers: {pro: [2/s]}}\n", []string{
			`rules.yaml:2:22: rule "a": class "chat" is not defined (no classes are defined)`,
			`rules.yaml:2:51: rule "a": tier "pro" is not defined (no tiers are defined)`}},
		{"duplicates", "classes:\n  - {name: c, prefix: x}\n  - {name: c, prefix: y}\nrules:\n  - {name: a, limits: 1/s}\n  - {name: a, limits: 1/s}\n", []string{
			`rules.yaml:3:5: class "c" is defined twice`, `rules.yaml:6:5: rule "a" is defined twice`}},
		{"class matchers", "classes:\n  - {name: c}\n  - {name: d, prefix: x, socketio-event: y}\nrules: []\n", []string{
			`rules.yaml:2:5: class "c" needs exactly one of`, `rules.yaml:3:5: class "d" needs exactly one of`}},
		{"unlimited class in a rule", "classes:\n  - {name: hb, prefix: x, unlimited: true}\nrules:\n  - {name: a, class: hb, limits: 1/s}\n", []string{
			`rules.yaml:4:22: rule "a": class "hb" is unlimited`}},
		{"handshake rule options", "classes:\n  - {name: c, prefix: x}\nrules:\n  - {name: a, count: handshakes, class: c, key: connection, action: drop, limits: 1/s}\n", []string{
			`rule "a": a handshake rule cannot count per connection`, `rule "a": a handshake rule has no class`,
			`rule "a": a refused handshake is always answered 429`}},
		{"bad keys", "rules:\n  - {name: a, key: tenant, limits: 1/s}\n  - {name: b, key: 'claim:', limits: 1/s}\n  - {name: c, key: 'header:x y', limits: 1/s}\n", []string{
			`rules.yaml:2:20: rule "a": key "tenant": want user, ip, connection`, `rules.yaml:3:20: rule "b": key "claim:"`, `rules.yaml:4:20: rule "c": key "header:x y"`}},
		{"bad names", "rules:\n  - {name: 'User Messages', limits: 1/s}\n", []string{`rule name "User Messages": use lower-case letters`}},
		{"options out of place", "rules:\n  - {name: a, limits: [1/s], burst: 5, close-after: 3, reset-strikes: 1h}\n", []string{
			`rule "a": burst is for algorithm: gcra`, `rule "a": close-after is for action: drop`, `rule "a": reset-strikes needs a block ladder`}},
		{"block ladder", "rules:\n  - {name: a, limits: [1/s], block: [1m, 5s, soon]}\n", []string{
			`rules.yaml:2:42: rule "a": a block ladder must not shorten (5s after 1m)`, `rules.yaml:2:46: rule "a": block "soon" is not a duration`}},
		{"lists", "deny: {cidrs: [10.0.0.0/33, not-an-ip], subjects: ['']}\nrules: []\n", []string{
			`rules.yaml:1:16: deny: "10.0.0.0/33" is not an IP address or CIDR`, `rules.yaml:1:29: deny: "not-an-ip" is not`, `deny: a subject must not be empty`}},
		{"tier conditions", "tiers:\n  - {name: a, when: {claim: plan}}\n  - {name: b, when: {claim: plan, in: [x], equals: y}}\n  - {name: c}\n  - {name: d, when: {claim: plan, exists: false}}\nrules: []\n", []string{
			`tier "a": when needs exactly one of`, `tier "b": when needs exactly one of`, `tier "c" needs a when`, `tier "d": exists: false would never select the tier`}},
		{"exempt tier limits", "tiers:\n  - {name: svc, when: {claim: svc, exists: true}, exempt: true}\nrules:\n  - {name: a, limits: 1/s, tiers: {svc: 5/s}}\n", []string{
			`tier "svc" is exempt from every rule`}},
		{"wrong shapes", "rules: {name: a}\n", []string{"rules.yaml:1:8: rules must be a list"}},
		{"not a bool", "rules:\n  - {name: a, limits: 1/s, shadow: yes please}\n", []string{`rule "a": shadow must be true or false`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("rules.yaml", []byte(tc.file))
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("%v does not wrap ErrInvalid", err)
			}
			msg := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not say %q:\n%s", w, msg)
				}
			}
			if n := strings.Count(msg, "\n") + 1; n != len(tc.want) {
				t.Errorf("%d errors, want %d:\n%s", n, len(tc.want), msg)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	f := filepath.Join(t.TempDir(), "rules.yaml")
	if _, err := Load(f); err == nil || !strings.Contains(err.Error(), "rules file: open") {
		t.Errorf("missing file: %v", err)
	}
	if err := os.WriteFile(f, []byte("rules: [{name: a, limits: 1/s}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := Load(f)
	if err != nil || p.Source != f || len(p.Rules) != 1 {
		t.Fatalf("%+v, %v", p, err)
	}
}

func TestParseWindow(t *testing.T) {
	for _, tc := range []struct {
		in    string
		bytes bool
		want  Window
		str   string
	}{
		{"100/10s", false, Window{100, 10 * time.Second}, "100/10s"},
		{"10/s", false, Window{10, time.Second}, "10/1s"},
		{" 60 / 1m ", false, Window{60, time.Minute}, "60/1m"},
		{"8MiB/10s", true, Window{8 << 20, 10 * time.Second}, "8MiB/10s"},
		{"500KB/1s", true, Window{500000, time.Second}, "500000/1s"},
		{"1536/1h", true, Window{1536, time.Hour}, "1536/1h"},
		{"2048B/1h30m", true, Window{2048, 90 * time.Minute}, "2KiB/1h30m"},
	} {
		w, err := ParseWindow(tc.in, tc.bytes)
		if err != nil || w != tc.want {
			t.Errorf("ParseWindow(%q) = %v, %v; want %v", tc.in, w, err, tc.want)
			continue
		}
		if s := formatWindow(w, tc.bytes); s != tc.str {
			t.Errorf("formatWindow(%v) = %q, want %q", w, s, tc.str)
		}
	}
	for _, bad := range []string{"100", "x/1s", "1/1x", "-1/1s", "1/0s", "1/1.5ms", "9007199254740993/1s"} {
		if _, err := ParseWindow(bad, false); err == nil {
			t.Errorf("ParseWindow(%q): no error", bad)
		}
	}
}

func TestFromFlags(t *testing.T) {
	p := FromFlags(Flags{
		UserRate: Window{100, 10 * time.Second}, UserBlock: 5 * time.Second,
		IPRate:       Window{1000, 10 * time.Second},
		UserConnRate: Window{30, time.Minute},
	})
	want := []Rule{
		{Name: "user-rate", Key: Key{Kind: KeyUser}, Limits: []Window{{100, 10 * time.Second}}, Block: []time.Duration{5 * time.Second}},
		{Name: "ip-rate", Key: Key{Kind: KeyIP}, Limits: []Window{{1000, 10 * time.Second}}},
		{Name: "user-conn-rate", Key: Key{Kind: KeyUser}, Count: CountHandshakes, Limits: []Window{{30, time.Minute}}},
	}
	if !reflect.DeepEqual(p.Rules, want) || p.Source != "flags" {
		t.Errorf("got %+v", p)
	}
}

// FuzzParse checks that no rules file makes Parse panic, and that a file it
// takes names every rule it has.
func FuzzParse(f *testing.F) {
	f.Add(example)
	f.Add(dropRulesForFuzz)
	f.Add("rules: [{name: a, limits: [1/s], block: [1s, 2s]}]")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := Parse("fuzz.yaml", []byte(s))
		if err != nil {
			return
		}
		for i := range p.Rules {
			if p.Rule(p.Rules[i].Name) != &p.Rules[i] || len(p.Rules[i].Limits) == 0 {
				t.Fatalf("rule %d: %+v", i, p.Rules[i])
			}
		}
	})
}

const dropRulesForFuzz = "classes: [{name: c, prefix: x}]\nrules: [{name: d, class: c, limits: 2/30s, action: drop, close-after: 3}]\n"
