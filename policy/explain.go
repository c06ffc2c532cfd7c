package policy

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Explain writes, for people, what the policy does with client c and, when
// message is not nil, with that text message from it: deny and allow, the
// tier, the rules that apply with their keys and limits, and the verdict on
// fresh counters.
func (p *Policy) Explain(w io.Writer, c *Client, message []byte) error {
	ew := &errWriter{w: w}
	ew.printf("client: ip %s, subject %s, path %s\n", orNone(c.IP.String(), !c.IP.IsValid()), orNone(c.Subject, c.Subject == ""), c.Path)
	ew.printf("policy: %s, %d rules\n", p.Source, len(p.Rules))
	a := p.Admit(c)
	switch {
	case a.Denied:
		ew.printf("deny: on the deny list: the handshake is refused with 403\n")
		return ew.err
	case a.Allowed:
		ew.printf("allow: on the allow list: every rule is skipped\n")
		return ew.err
	}
	if a.Tier != nil {
		ew.printf("tier: %s (%s)\n", a.Tier.Name, a.Tier.When.describe())
		if a.Tier.Exempt {
			ew.printf("the tier is exempt: every rule is skipped\n")
			return ew.err
		}
	} else if len(p.Tiers) > 0 {
		ew.printf("tier: none (no tier's condition holds)\n")
	}
	tw := tabwriter.NewWriter(ew, 2, 4, 2, ' ', 0)
	ew.printf("handshake:\n")
	if len(a.Handshake) == 0 {
		ew.printf("  no handshake rule applies\n")
	}
	for _, ap := range a.Handshake {
		fmt.Fprintf(tw, "  %s\tkey %s=%s\t%s\t%s\n", ap.Rule.Name, ap.Rule.Key, ap.Key, ap.limits(tierName(a.Tier)), ap.Rule.consequence())
	}
	tw.Flush()
	if message != nil {
		class, also := p.ClassOf(message)
		ew.printf("message: %s (%d bytes)\n", quoteShort(message), len(message))
		switch {
		case class < 0 && len(p.Classes) > 0:
			ew.printf("  class: none (no class matches it)\n")
		case class >= 0 && p.Classes[class].Unlimited:
			ew.printf("  class: %s, unlimited: it passes every rule uncounted\n", p.Classes[class].Name)
		case class >= 0:
			ew.printf("  class: %s\n", p.Classes[class].Name)
		}
		if also != 0 {
			var names []string
			for i := range p.Classes {
				if also>>i&1 == 1 {
					names = append(names, p.Classes[i].Name)
				}
			}
			ew.printf("  also charged as: %s (a member of its name has that value elsewhere in the message,\n"+
				"  which some JSON parsers read)\n", strings.Join(names, ", "))
		}
		var counted, refused []string
		for _, ap := range a.Messages {
			if !ap.Covers(p, class) && !ap.CoversAny(p, also) {
				continue
			}
			lim := ap.limits(tierName(a.Tier))
			if ap.Rule.Count == CountBytes {
				lim = strconv.Itoa(len(message)) + " B of " + lim
			}
			fmt.Fprintf(tw, "  %s\tkey %s=%s\t%s\t%s\n", ap.Rule.Name, ap.Rule.Key, ap.Key, lim, ap.Rule.consequence())
			switch {
			case ap.Rule.Shadow:
			case ap.tooBig(len(message)):
				refused = append(refused, ap.Rule.Name)
			default:
				counted = append(counted, ap.Rule.Name)
			}
		}
		tw.Flush()
		switch {
		case len(refused) > 0:
			ew.printf("verdict: refused even on fresh counters: larger than the byte limit of %s\n", strings.Join(refused, ", "))
		case len(counted) == 0:
			ew.printf("verdict: passes; no enforced rule counts it\n")
		default:
			ew.printf("verdict: passes on fresh counters and counts against %s\n", strings.Join(counted, ", "))
		}
	}
	for _, r := range a.Skipped {
		ew.printf("skipped: %s (its key, %s, is absent)\n", r.Name, r.Key)
	}
	return ew.err
}

// limits writes the limits that apply, marking a tier's.
func (ap *Applied) limits(tier string) string {
	s := formatWindows(ap.Limits, ap.Rule.Count == CountBytes)
	if _, ok := ap.Rule.Tiers[tier]; ok && tier != "" {
		s += " (tier " + tier + ")"
	}
	if ap.Rule.Algorithm == GCRA {
		s += " gcra"
		if ap.Rule.Burst > 0 {
			s += " burst " + strconv.FormatInt(ap.Rule.Burst, 10)
		}
	}
	return s
}

// tooBig reports whether a message of n payload bytes is over one of a byte
// rule's limits on its own.
func (ap *Applied) tooBig(n int) bool {
	if ap.Rule.Count != CountBytes {
		return false
	}
	for _, w := range ap.Limits {
		if int64(n) > w.Limit {
			return true
		}
	}
	return false
}

// consequence says what happens to a client over the rule.
func (r *Rule) consequence() string {
	if r.Shadow {
		return "shadow: over is logged, never refused"
	}
	var s string
	switch {
	case r.Handshakes():
		s = "over: 429"
	case r.Action == Drop:
		s = "over: 429 frame, message dropped, connection kept"
		if r.CloseAfter > 0 {
			s += fmt.Sprintf(", closed (4008) at the %s drop in a window", ordinal(r.CloseAfter))
		}
	default:
		s = "over: 429 frame, close 4008"
	}
	switch len(r.Block) {
	case 0:
		s += ", refused until the window ends"
	case 1:
		s += ", blocked " + shortDuration(r.Block[0])
	default:
		steps := make([]string, len(r.Block))
		for i, b := range r.Block {
			steps[i] = shortDuration(b)
		}
		s += ", blocked " + strings.Join(steps, " then ") + " (strikes reset after " + shortDuration(r.ResetStrikes) + " quiet)"
	}
	return s
}

// describe writes the condition as the file does.
func (c *Condition) describe() string {
	claim := "claim " + strings.Join(c.Claim, ".")
	switch {
	case c.Exists:
		return claim + " is present"
	case c.Equals != nil:
		return claim + " is " + strconv.Quote(*c.Equals)
	case c.In != nil:
		return claim + " in [" + strings.Join(c.In, ", ") + "]"
	case c.Contains != nil:
		return claim + " contains " + strconv.Quote(*c.Contains)
	}
	return claim
}

func tierName(t *Tier) string {
	if t == nil {
		return ""
	}
	return t.Name
}

func orNone(s string, none bool) string {
	if none {
		return "none"
	}
	return s
}

// quoteShort quotes a message for a line of text, cut at 80 bytes.
func quoteShort(b []byte) string {
	if len(b) > 80 {
		return strconv.Quote(string(b[:80])) + "..."
	}
	return strconv.Quote(string(b))
}

func ordinal(n int) string {
	suffix := "th"
	switch {
	case n%100 >= 11 && n%100 <= 13:
	case n%10 == 1:
		suffix = "st"
	case n%10 == 2:
		suffix = "nd"
	case n%10 == 3:
		suffix = "rd"
	}
	return strconv.Itoa(n) + suffix
}

// errWriter keeps the first write error.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(b []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(b)
	e.err = err
	return n, err
}

func (e *errWriter) printf(format string, args ...any) { fmt.Fprintf(e, format, args...) }
