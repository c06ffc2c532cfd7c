package policy

import "time"

// Flags are the four rule flags of the gate. A zero Window is a rule that
// is off.
type Flags struct {
	UserRate, IPRate         Window // --user-rate, --ip-rate: messages
	UserBlock, IPBlock       time.Duration
	UserConnRate, IPConnRate Window // --user-conn-rate, --ip-conn-rate: handshakes
}

// FromFlags compiles the rule flags to a policy: one rule per flag that is
// on, named after it, with the semantics the flags always had. A message
// rule's block also refuses the key's handshakes (the limiter's guard).
func FromFlags(f Flags) *Policy {
	pol := &Policy{Source: "flags"}
	add := func(name string, key KeyKind, count Count, w Window, block time.Duration) {
		if w.Limit <= 0 {
			return
		}
		r := Rule{Name: name, Key: Key{Kind: key}, Count: count, Limits: []Window{w}}
		if block > 0 {
			r.Block = []time.Duration{block}
		}
		pol.Rules = append(pol.Rules, r)
	}
	add("user-rate", KeyUser, CountMessages, f.UserRate, f.UserBlock)
	add("ip-rate", KeyIP, CountMessages, f.IPRate, f.IPBlock)
	add("user-conn-rate", KeyUser, CountHandshakes, f.UserConnRate, 0)
	add("ip-conn-rate", KeyIP, CountHandshakes, f.IPConnRate, 0)
	return pol
}
