package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/holo/wsgate/internal/suggest"
)

// Error is one problem in a rules file, at a line and column.
type Error struct {
	File      string
	Line, Col int
	Msg       string
}

func (e *Error) Error() string {
	if e.Line == 0 {
		return e.File + ": " + e.Msg
	}
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Col, e.Msg)
}

// Unwrap returns ErrInvalid.
func (e *Error) Unwrap() error { return ErrInvalid }

// defaultResetStrikes is how long a key's refusals are remembered for a
// block ladder when the rule does not say.
const defaultResetStrikes = time.Hour

// nameRE is what a class, tier or rule name may be: it is a metric label
// value and part of Redis keys.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

// Load reads and parses a rules file.
func Load(file string) (*Policy, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("rules file: %w", err)
	}
	return Parse(file, data)
}

// Parse parses and validates the content of a rules file; file names it in
// errors. The error lists every problem found, one per line, each an *Error
// with its line and column.
func Parse(file string, data []byte) (*Policy, error) {
	p := &parser{file: file}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil && err != io.EOF {
		return nil, &Error{File: file, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, &Error{File: file, Msg: "the file is empty: it needs at least a rules: list"}
	}
	var more yaml.Node
	if err := dec.Decode(&more); err != io.EOF {
		// A second document would be ignored: say so rather than apply
		// half of what the file says.
		e := &Error{File: file, Msg: "a rules file is one YAML document: a second one (after ---) would be ignored"}
		if err == nil {
			e.Line, e.Col = more.Line, more.Column
		}
		return nil, e
	}
	p.noAliases(doc.Content[0])
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	pol := p.policy(doc.Content[0])
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	sum := sha256.Sum256(data)
	pol.Source, pol.Hash = file, hex.EncodeToString(sum[:])
	return pol, nil
}

// noAliases reports each YAML alias (*name) and merge key (<<) under n:
// the parser reads the tree as written, so they would otherwise be met as
// a value of the wrong kind or an unknown field.
func (p *parser) noAliases(n *yaml.Node) {
	switch {
	case n.Kind == yaml.AliasNode:
		p.errorf(n, "YAML aliases (*%s) are not supported: write the value out", n.Value)
		return
	case n.Kind == yaml.ScalarNode && n.Tag == "!!merge":
		p.errorf(n, "YAML merge keys (<<) are not supported: write the fields out")
	}
	for _, c := range n.Content {
		p.noAliases(c)
	}
}

// maxBurstSpan bounds how long a GCRA burst lasts at its rate: a year
// keeps the stores' time arithmetic far from overflowing.
const maxBurstSpan = 365 * 24 * time.Hour

// parser walks a rules file's YAML tree and collects every problem.
type parser struct {
	file string
	errs []error
}

func (p *parser) errorf(n *yaml.Node, format string, args ...any) {
	e := &Error{File: p.file, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Col = n.Line, n.Column
	}
	p.errs = append(p.errs, e)
}

// fields returns the members of mapping n by key, reporting keys that are
// not allowed (with the nearest allowed one) or repeated.
func (p *parser) fields(n *yaml.Node, what string, allowed ...string) map[string]*yaml.Node {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "%s must be a mapping (key: value)", what)
		return nil
	}
	out := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch {
		case !slices.Contains(allowed, k.Value):
			msg := fmt.Sprintf("%s: unknown field %q", what, k.Value)
			if s := suggest.Closest(k.Value, allowed); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			} else {
				msg += " (fields: " + strings.Join(allowed, ", ") + ")"
			}
			p.errorf(k, "%s", msg)
		case out[k.Value] != nil:
			p.errorf(k, "%s: %q is given twice", what, k.Value)
		default:
			out[k.Value] = v
		}
	}
	return out
}

// str returns a scalar's text.
func (p *parser) str(n *yaml.Node, what string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.errorf(n, "%s must be a single value", what)
		return "", false
	}
	return n.Value, true
}

// strs returns a sequence of scalars; a single scalar is a list of one.
func (p *parser) strs(n *yaml.Node, what string) ([]string, bool) {
	if n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
		return []string{n.Value}, true
	}
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, "%s must be a list", what)
		return nil, false
	}
	out := make([]string, 0, len(n.Content))
	ok := true
	for _, e := range n.Content {
		s, good := p.str(e, what+" entries")
		ok = ok && good
		out = append(out, s)
	}
	return out, ok
}

func (p *parser) boolean(n *yaml.Node, what string) bool {
	s, ok := p.str(n, what)
	if !ok {
		return false
	}
	b, err := strconv.ParseBool(s)
	if err != nil || n.Tag != "!!bool" {
		p.errorf(n, "%s must be true or false", what)
	}
	return b
}

func (p *parser) duration(n *yaml.Node, what string) time.Duration {
	s, ok := p.str(n, what)
	if !ok {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		p.errorf(n, "%s: %q is not a duration (e.g. 5s, 1m, 1h)", what, s)
		return 0
	}
	if err := wholeMillis(d, false); err != nil {
		p.errorf(n, "%s %s", what, err)
	}
	return d
}

func (p *parser) name(n *yaml.Node, what string) string {
	s, ok := p.str(n, what+" name")
	if ok && !nameRE.MatchString(s) {
		p.errorf(n, "%s name %q: use lower-case letters, digits, '-', '_' and '.', starting with a letter or digit, at most 63", what, s)
	}
	return s
}

// list calls each for every entry of sequence n.
func (p *parser) list(n *yaml.Node, what string, each func(*yaml.Node)) {
	if n == nil {
		return
	}
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, "%s must be a list", what)
		return
	}
	for _, e := range n.Content {
		each(e)
	}
}

func (p *parser) policy(root *yaml.Node) *Policy {
	before := len(p.errs)
	f := p.fields(root, "the rules file", "classes", "tiers", "deny", "allow", "rules")
	typo := len(p.errs) > before // a misspelt rules: says enough
	pol := &Policy{}
	if f == nil {
		return pol
	}
	p.list(f["classes"], "classes", func(n *yaml.Node) {
		if c, ok := p.class(n); ok {
			if slices.ContainsFunc(pol.Classes, func(o Class) bool { return o.Name == c.Name }) {
				p.errorf(n, "class %q is defined twice", c.Name)
			}
			pol.Classes = append(pol.Classes, c)
		}
	})
	p.list(f["tiers"], "tiers", func(n *yaml.Node) {
		if t, ok := p.tier(n); ok {
			if slices.ContainsFunc(pol.Tiers, func(o Tier) bool { return o.Name == t.Name }) {
				p.errorf(n, "tier %q is defined twice", t.Name)
			}
			pol.Tiers = append(pol.Tiers, t)
		}
	})
	if n := f["deny"]; n != nil {
		pol.Deny = p.clients(n, "deny")
	}
	if n := f["allow"]; n != nil {
		pol.Allow = p.clients(n, "allow")
	}
	rules := f["rules"]
	if rules == nil {
		if typo {
			return pol
		}
		p.errorf(root, "the rules file has no rules: list (an empty list, rules: [], limits nothing)")
		return pol
	}
	p.list(rules, "rules", func(n *yaml.Node) {
		if r, ok := p.rule(n, pol); ok {
			if pol.Rule(r.Name) != nil {
				p.errorf(n, "rule %q is defined twice", r.Name)
			}
			pol.Rules = append(pol.Rules, r)
		}
	})
	if len(pol.Rules) > MaxRules {
		p.errorf(rules, "%d rules: at most %d", len(pol.Rules), MaxRules)
	}
	if len(pol.Classes) > MaxClasses {
		p.errorf(f["classes"], "%d classes: at most %d", len(pol.Classes), MaxClasses)
	}
	return pol
}

func (p *parser) class(n *yaml.Node) (Class, bool) {
	f := p.fields(n, "a class", "name", "socketio-event", "json-field", "prefix", "unlimited")
	if f == nil {
		return Class{}, false
	}
	c := Class{Line: n.Line}
	if f["name"] == nil {
		p.errorf(n, "a class needs a name")
		return c, false
	}
	c.Name = p.name(f["name"], "class")
	what := fmt.Sprintf("class %q", c.Name)
	matchers := 0
	if v := f["socketio-event"]; v != nil {
		matchers++
		c.SocketIOEvent, _ = p.str(v, what+": socketio-event")
		if c.SocketIOEvent == "" {
			p.errorf(v, "%s: socketio-event must name an event", what)
		}
	}
	if v := f["json-field"]; v != nil {
		matchers++
		jf := p.fields(v, what+": json-field", "path", "equals")
		switch {
		case jf == nil:
		case jf["path"] == nil || jf["equals"] == nil:
			p.errorf(v, "%s: json-field needs a path and an equals", what)
		default:
			ps, _ := p.str(jf["path"], what+": json-field path")
			c.FieldPath = strings.Split(ps, ".")
			switch {
			case slices.Contains(c.FieldPath, ""):
				p.errorf(jf["path"], "%s: json-field path %q: keys separated by dots, none empty", what, ps)
			case len(c.FieldPath) > MaxFieldDepth:
				p.errorf(jf["path"], "%s: json-field path %q: at most %d keys", what, ps, MaxFieldDepth)
			}
			c.FieldEquals, _ = p.str(jf["equals"], what+": json-field equals")
		}
	}
	if v := f["prefix"]; v != nil {
		matchers++
		c.Prefix, _ = p.str(v, what+": prefix")
		if c.Prefix == "" {
			p.errorf(v, "%s: an empty prefix would match every message", what)
		}
	}
	if matchers != 1 {
		p.errorf(n, "%s needs exactly one of socketio-event, json-field and prefix", what)
	}
	if v := f["unlimited"]; v != nil {
		c.Unlimited = p.boolean(v, what+": unlimited")
	}
	return c, true
}

func (p *parser) tier(n *yaml.Node) (Tier, bool) {
	f := p.fields(n, "a tier", "name", "when", "exempt")
	if f == nil {
		return Tier{}, false
	}
	t := Tier{Line: n.Line}
	if f["name"] == nil {
		p.errorf(n, "a tier needs a name")
		return t, false
	}
	t.Name = p.name(f["name"], "tier")
	what := fmt.Sprintf("tier %q", t.Name)
	if v := f["exempt"]; v != nil {
		t.Exempt = p.boolean(v, what+": exempt")
	}
	w := f["when"]
	if w == nil {
		p.errorf(n, "%s needs a when: {claim: ..., in: [...]}", what)
		return t, true
	}
	wf := p.fields(w, what+": when", "claim", "equals", "in", "contains", "exists")
	if wf == nil {
		return t, true
	}
	if wf["claim"] == nil {
		p.errorf(w, "%s: when needs a claim", what)
	} else if s, ok := p.str(wf["claim"], what+": claim"); ok {
		t.When.Claim = strings.Split(s, ".")
		if slices.Contains(t.When.Claim, "") {
			p.errorf(wf["claim"], "%s: claim %q: names separated by dots, none empty", what, s)
		}
	}
	tests := 0
	if v := wf["equals"]; v != nil {
		tests++
		s, _ := p.str(v, what+": equals")
		t.When.Equals = &s
	}
	if v := wf["in"]; v != nil {
		tests++
		t.When.In, _ = p.strs(v, what+": in")
		if t.When.In == nil {
			t.When.In = []string{}
		}
	}
	if v := wf["contains"]; v != nil {
		tests++
		s, _ := p.str(v, what+": contains")
		t.When.Contains = &s
	}
	if v := wf["exists"]; v != nil {
		tests++
		t.When.Exists = p.boolean(v, what+": exists")
		if !t.When.Exists {
			p.errorf(v, "%s: exists: false would never select the tier", what)
		}
	}
	if tests != 1 {
		p.errorf(w, "%s: when needs exactly one of equals, in, contains and exists", what)
	}
	return t, true
}

func (p *parser) clients(n *yaml.Node, what string) List {
	var l List
	f := p.fields(n, what, "cidrs", "subjects")
	if f == nil {
		return l
	}
	if v := f["cidrs"]; v != nil {
		ss, _ := p.strs(v, what+": cidrs")
		for i, s := range ss {
			at := v
			if v.Kind == yaml.SequenceNode {
				at = v.Content[i]
			}
			pfx, err := netip.ParsePrefix(s)
			if err != nil {
				if a, aerr := netip.ParseAddr(s); aerr == nil {
					pfx, err = a.Prefix(a.BitLen())
				}
			}
			if err != nil {
				p.errorf(at, "%s: %q is not an IP address or CIDR (203.0.113.0/24, 2001:db8::/32)", what, s)
				continue
			}
			if pfx.Addr().Is4In6() {
				pfx = netip.PrefixFrom(pfx.Addr().Unmap(), max(pfx.Bits()-96, 0))
			}
			l.CIDRs = append(l.CIDRs, pfx.Masked())
		}
	}
	if v := f["subjects"]; v != nil {
		l.Subjects, _ = p.strs(v, what+": subjects")
		if slices.Contains(l.Subjects, "") {
			p.errorf(v, "%s: a subject must not be empty", what)
		}
	}
	return l
}

func (p *parser) rule(n *yaml.Node, pol *Policy) (Rule, bool) {
	f := p.fields(n, "a rule", "name", "class", "path", "key", "count", "limits", "tiers", "block",
		"reset-strikes", "algorithm", "burst", "action", "close-after", "shadow")
	if f == nil {
		return Rule{}, false
	}
	r := Rule{Line: n.Line}
	if f["name"] == nil {
		p.errorf(n, "a rule needs a name")
		return r, false
	}
	r.Name = p.name(f["name"], "rule")
	what := fmt.Sprintf("rule %q", r.Name)
	if v := f["count"]; v != nil {
		s, _ := p.str(v, what+": count")
		i := slices.Index(countNames, s)
		if i < 0 {
			p.errorf(v, "%s: count %q: want messages, bytes or handshakes", what, s)
		} else {
			r.Count = Count(i)
		}
	}
	if v := f["key"]; v != nil {
		s, _ := p.str(v, what+": key")
		k, err := ParseKey(s)
		if err != nil {
			p.errorf(v, "%s: %v", what, err)
		}
		r.Key = k
		if k.Kind == KeyConnection && r.Handshakes() {
			p.errorf(v, "%s: a handshake rule cannot count per connection: each handshake is a new one", what)
		}
	}
	if v := f["class"]; v != nil {
		r.Class, _ = p.str(v, what+": class")
		i := slices.IndexFunc(pol.Classes, func(c Class) bool { return c.Name == r.Class })
		switch {
		case r.Handshakes():
			p.errorf(v, "%s: a handshake rule has no class: classes name messages", what)
		case i < 0:
			p.errorf(v, "%s: class %q is not defined%s", what, r.Class, among("classes", pol.Classes, func(c Class) string { return c.Name }))
		case pol.Classes[i].Unlimited:
			p.errorf(v, "%s: class %q is unlimited: no rule counts its messages", what, r.Class)
		}
	}
	if v := f["path"]; v != nil {
		r.Path, _ = p.str(v, what+": path")
		if _, err := path.Match(r.Path, "/"); err != nil || !strings.HasPrefix(r.Path, "/") {
			p.errorf(v, "%s: path %q: want a pattern starting with / (\"/rooms/*\", see Go's path.Match)", what, r.Path)
		}
	}
	bytes := r.Count == CountBytes
	if v := f["limits"]; v == nil {
		p.errorf(n, "%s needs limits: [N/duration, ...]", what)
	} else {
		r.Limits = p.windows(v, what+": limits", bytes)
	}
	if v := f["tiers"]; v != nil {
		p.ruleTiers(v, what, &r, pol)
	}
	if v := f["block"]; v != nil {
		p.block(v, what, &r)
	}
	if v := f["reset-strikes"]; v != nil {
		r.ResetStrikes = p.duration(v, what+": reset-strikes")
		if len(r.Block) < 2 {
			p.errorf(v, "%s: reset-strikes needs a block ladder (block: [5s, 1m, 10m])", what)
		}
	} else if len(r.Block) > 1 {
		r.ResetStrikes = defaultResetStrikes
	}
	if v := f["algorithm"]; v != nil {
		switch s, _ := p.str(v, what+": algorithm"); s {
		case "fixed":
		case "gcra":
			r.Algorithm = GCRA
		default:
			p.errorf(v, "%s: algorithm %q: want fixed or gcra", what, s)
		}
	}
	if v := f["burst"]; v != nil {
		s, _ := p.str(v, what+": burst")
		b, err := strconv.ParseInt(s, 10, 64)
		switch {
		case err != nil || b < 1:
			p.errorf(v, "%s: burst must be a whole number of at least 1", what)
		case r.Algorithm != GCRA:
			p.errorf(v, "%s: burst is for algorithm: gcra (a fixed window's burst is its limit)", what)
		case len(r.Limits) != 1 || len(r.Tiers) > 0:
			p.errorf(v, "%s: burst needs exactly one limit and no tiers (say which window it belongs to)", what)
		case r.Limits[0].Limit > 0 && float64(b)*float64(r.Limits[0].Per)/float64(r.Limits[0].Limit) > float64(maxBurstSpan):
			p.errorf(v, "%s: burst %d is more than a year of the rate %s: at most %d", what, b, r.Limits[0],
				int64(float64(maxBurstSpan)*float64(r.Limits[0].Limit)/float64(r.Limits[0].Per)))
		}
		r.Burst = b
	}
	if v := f["action"]; v != nil {
		switch s, _ := p.str(v, what+": action"); s {
		case "close":
		case "drop":
			r.Action = Drop
			if r.Handshakes() {
				p.errorf(v, "%s: a refused handshake is always answered 429: action is for message rules", what)
			}
		default:
			p.errorf(v, "%s: action %q: want close or drop", what, s)
		}
	}
	if v := f["close-after"]; v != nil {
		s, _ := p.str(v, what+": close-after")
		k, err := strconv.Atoi(s)
		switch {
		case err != nil || k < 1:
			p.errorf(v, "%s: close-after must be a whole number of at least 1", what)
		case r.Action != Drop:
			p.errorf(v, "%s: close-after is for action: drop", what)
		}
		r.CloseAfter = k
	}
	if v := f["shadow"]; v != nil {
		r.Shadow = p.boolean(v, what+": shadow")
	}
	return r, true
}

// windows parses a list of limits; a single one may stand alone.
func (p *parser) windows(n *yaml.Node, what string, bytes bool) []Window {
	ss, ok := p.strs(n, what)
	if !ok {
		return nil
	}
	if len(ss) == 0 {
		p.errorf(n, "%s: at least one limit", what)
	}
	ws := make([]Window, 0, len(ss))
	for i, s := range ss {
		at := n
		if n.Kind == yaml.SequenceNode {
			at = n.Content[i]
		}
		w, err := ParseWindow(s, bytes)
		if err != nil {
			p.errorf(at, "%s: %v", what, err)
			continue
		}
		if slices.ContainsFunc(ws, func(o Window) bool { return o.Per == w.Per }) {
			p.errorf(at, "%s: two limits per %s", what, shortDuration(w.Per))
		}
		ws = append(ws, w)
	}
	return ws
}

func (p *parser) ruleTiers(n *yaml.Node, what string, r *Rule, pol *Policy) {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "%s: tiers must map tier names to limits ({pro: [1000/10s]})", what)
		return
	}
	r.Tiers = make(map[string][]Window, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		j := slices.IndexFunc(pol.Tiers, func(t Tier) bool { return t.Name == k.Value })
		switch {
		case j < 0:
			p.errorf(k, "%s: tier %q is not defined%s", what, k.Value, among("tiers", pol.Tiers, func(t Tier) string { return t.Name }))
		case pol.Tiers[j].Exempt:
			p.errorf(k, "%s: tier %q is exempt from every rule: limits for it would never apply", what, k.Value)
		case r.Tiers[k.Value] != nil:
			p.errorf(k, "%s: tier %q is given twice", what, k.Value)
		}
		r.Tiers[k.Value] = p.windows(v, fmt.Sprintf("%s: tier %q", what, k.Value), r.Count == CountBytes)
	}
}

func (p *parser) block(n *yaml.Node, what string, r *Rule) {
	ss, ok := p.strs(n, what+": block")
	if !ok {
		return
	}
	for i, s := range ss {
		at := n
		if n.Kind == yaml.SequenceNode {
			at = n.Content[i]
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			p.errorf(at, "%s: block %q is not a duration (e.g. 5s, 1m)", what, s)
			continue
		}
		if err := wholeMillis(d, false); err != nil {
			p.errorf(at, "%s: block %s", what, err)
			continue
		}
		if len(r.Block) > 0 && d < r.Block[len(r.Block)-1] {
			p.errorf(at, "%s: a block ladder must not shorten (%s after %s)", what, s, shortDuration(r.Block[len(r.Block)-1]))
		}
		r.Block = append(r.Block, d)
	}
}

// among lists the names defined, for an error about an undefined one.
func among[T any](what string, xs []T, name func(T) string) string {
	if len(xs) == 0 {
		return " (no " + what + " are defined)"
	}
	names := make([]string, len(xs))
	for i, x := range xs {
		names[i] = name(x)
	}
	return " (" + what + ": " + strings.Join(names, ", ") + ")"
}
