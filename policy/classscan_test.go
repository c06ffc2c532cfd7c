package policy

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
)

// scanPolicy has classes of every kind, in an order where a prefix class
// sits between json-field ones.
func scanPolicy() *Policy {
	return &Policy{Classes: []Class{
		{Name: "chat", FieldPath: []string{"type"}, FieldEquals: "chat"},
		{Name: "pre", Prefix: `{"pre`},
		{Name: "deep", FieldPath: []string{"data", "kind"}, FieldEquals: "x"},
		{Name: "num", FieldPath: []string{"n"}, FieldEquals: "17"},
		{Name: "ping", FieldPath: []string{"type"}, FieldEquals: "ping", Unlimited: true},
		{Name: "send", SocketIOEvent: "chat:send"},
		{Name: "bin", Prefix: "45"},
		{Name: "typing", SocketIOEvent: "typing"},
	}}
}

// scanClass runs a ClassScan over msg in pieces of step bytes.
func scanClass(pol *Policy, msg []byte, step int) (class int, also uint64, ok bool) {
	var s ClassScan
	s.Start(pol)
	for i := 0; i < len(msg); i += step {
		s.Write(msg[i:min(len(msg), i+step)])
	}
	return s.Class()
}

func TestClassScan(t *testing.T) {
	pad := `"pad":"` + strings.Repeat("x", 600) + `"`
	const chat, deep, num = 1 << 0, 1 << 2, 1 << 3
	cases := []struct {
		name  string
		msg   string
		class int
		also  uint64 // classes some parser may see too
		json  bool
	}{
		{"member past the head", `{` + pad + `,"type":"chat"}`, 0, 0, true},
		// The last of duplicate names decides; an unlimited class holds
		// only when its path took no other value; a limited class whose
		// value came before the last is charged too.
		{"duplicate past the head", `{"type":"ping",` + pad + `,"type":"chat"}`, 0, 0, true},
		{"duplicate back to unlimited", `{"type":"chat",` + pad + `,"type":"ping"}`, -1, chat, true},
		{"duplicate to nothing", `{"type":"chat",` + pad + `,"type":"other"}`, -1, chat, true},
		{"unlimited for one parser only", `{"type":"ping",` + pad + `,"Type":"other"}`, -1, 0, true},
		{"escaped key", `{` + pad + `,"\u0074ype":"chat"}`, 0, 0, true},
		{"escaped value", `{` + pad + `,"type":"ch\u0061t"}`, 0, 0, true},
		{"nested", `{"data":{` + pad + `,"kind":"x"}}`, 2, 0, true},
		// A Go struct merges an object named twice (into a map field
		// too), keeps a field when the new value is null or has the wrong
		// type, and matches names in any case.
		{"nested object named again", `{"data":{"kind":"x"},` + pad + `,"data":{"other":1}}`, -1, deep, true},
		{"nested value replaced by a scalar", `{"data":{"kind":"x"},` + pad + `,"data":5}`, -1, deep, true},
		{"nested value replaced by null", `{"data":{"kind":"x"},` + pad + `,"data":null}`, -1, deep, true},
		{"a name in another case", `{"type":"ping",` + pad + `,"TYPE":"chat"}`, -1, chat, true},
		{"a name in another case alone", `{"TYPE":"chat",` + pad + `}`, -1, chat, true},
		{"a name folded", `{"data":{` + pad + `,"\u212aIND":"x"}}`, -1, deep, true},
		{"null after the value", `{"type":"chat",` + pad + `,"type":null}`, -1, chat, true},
		{"a number after the value", `{"type":"chat",` + pad + `,"type":1}`, -1, chat, true},
		{"a name twice: every class it took", `{"type":"chat","n":17,` + pad + `,"N":17}`, 0, num, true},
		{"nested under another key", `{"other":{"kind":"x"},` + pad + `}`, -1, 0, true},
		{"path inside an array is not the path", `{"list":[{"type":"chat"}],` + pad + `}`, -1, 0, true},
		{"number literal", `{` + pad + `,"n":17}`, 3, 0, true},
		{"number written otherwise", `{` + pad + `,"n":1.7e1}`, 3, 0, true},
		{"number written long", `{` + pad + `,"n":17.` + strings.Repeat("0", 100) + `}`, -1, num, true},
		{"number written long beside a heartbeat", `{"n":17.` + strings.Repeat("0", 100) + `,"type":"ping"}`, -1, num, true},
		{"number written longer than the class's", `{"n":1.70000000000000000000e1,"type":"ping"}`, 3, 0, true},
		{"an ordinary long number", `{` + pad + `,"n":1234567890123.5}`, -1, 0, true},
		{"a heartbeat with a name in another case", `{"type":"ping","N":17}`, -1, num, true},
		{"another number", `{` + pad + `,"n":17.5}`, -1, 0, true},
		{"string number", `{` + pad + `,"n":"17"}`, 3, 0, true},
		{"value is an object", `{` + pad + `,"type":{"chat":1}}`, -1, 0, true},
		{"quotes and braces in strings", `{"s":"}\"{[","type":"chat","t":"` + strings.Repeat(`\"}`, 300) + `"}`, 0, 0, true},
		{"white space everywhere", " {\n\t\"type\" :\r \"chat\" ,  " + pad + " } \n", 0, 0, true},
		{"prefix class keeps its place", `{"pre":1,` + pad + `,"type":"chat"}`, 0, 0, true},
		{"prefix class before a later json class", `{"pre":1,` + pad + `,"n":17}`, 1, 0, true},
		{"long value", `{"type":"` + strings.Repeat("c", 1000) + `",` + pad + `}`, -1, 0, true},
		{"long key", `{"` + strings.Repeat("t", 1000) + `":"chat",` + pad + `}`, -1, 0, true},
		// Bytes after the object: Go's json.Decoder reads up to its end.
		{"bytes after the object", `{` + pad + `,"type":"chat"} x`, 0, 0, false},
		{"object never ends", `{` + pad + `,"type":"chat"`, -1, 0, false},
		{"top-level array", `["type","chat",` + pad[6:] + `]`, -1, 0, true},
	}
	pol := scanPolicy()
	for _, c := range cases {
		if c.json != json.Valid([]byte(c.msg)) {
			t.Fatalf("%s: json.Valid says %v", c.name, !c.json)
		}
		for _, step := range []int{1, 3, 7, 512, len(c.msg)} {
			class, also, ok := scanClass(pol, []byte(c.msg), step)
			if !ok || class != c.class || also != c.also {
				t.Errorf("%s (pieces of %d): class %d also %b, %v; want %d also %b", c.name, step, class, also, ok, c.class, c.also)
			}
		}
		if got, also := pol.ClassOf([]byte(c.msg)); got != c.class || also != c.also {
			t.Errorf("%s: ClassOf %d also %b, want %d also %b", c.name, got, also, c.class, c.also)
		}
	}
}

// TestClassScanUnlimited: an unlimited class passes a message uncounted
// only when no parser can read it otherwise; found by an independent
// review, each through the proxy.
func TestClassScanUnlimited(t *testing.T) {
	pol := &Policy{Classes: []Class{
		{Name: "chat", FieldPath: []string{"kind"}, FieldEquals: "chat"},
		{Name: "vote", FieldPath: []string{"n"}, FieldEquals: "1"},
		{Name: "hb", FieldPath: []string{"type"}, FieldEquals: "ping", Unlimited: true},
		{Name: "hb2", FieldPath: []string{"meta", "type"}, FieldEquals: "ping", Unlimited: true},
		{Name: "hbn", FieldPath: []string{"op"}, FieldEquals: "1", Unlimited: true},
	}}
	for msg, want := range map[string]int{
		`{"type":"ping","text":"hi"}`:                           2,
		`{"meta":{"type":"ping"}}`:                              3,
		`{"type":"ping","Kind":"chat","text":"spam"}`:           -1, // a Go struct reads Kind
		`{"n":1.` + strings.Repeat("0", 70) + `,"type":"ping"}`: -1, // JSON.parse reads n as 1
		`{"meta":{"type":"ping"},"Meta":null,"text":"spam"}`:    -1, // a pointer field is nil
		`{"meta":{"type":"ping"},"meta":{"type":"pong"}}`:       -1,
		`{"type":"ping","TYPE":"ping"}`:                         -1, // names twice: no free pass
		`{"kind":"chat","type":"ping"}`:                         0,
		`{"type":"ping","kind":"chat"}`:                         0,
		// The fourth review: bytes after the object (JSON.parse refuses
		// it), a value of another type or spelling than the class's.
		`{"type":"ping"} `:     2,
		`{"type":"ping"}x`:     -1,
		`{"type":"ping"}{}`:    -1,
		`{"op":1}`:             4,
		`{"op":"1"}`:           -1,
		`{"op":1.0}`:           -1,
		`{"op":1e0}`:           -1,
		`{"type":"\u0070ing"}`: 2,
	} {
		if got, _ := pol.ClassOf([]byte(msg)); got != want {
			t.Errorf("ClassOf(%s) = %d, want %d", msg, got, want)
		}
	}
}

// TestClassScanSettled: the scan settles where no later byte can change
// the class, so that the bytes that settle it wait for its charge: at the
// object's end, whatever prefix class is longer (the fourth review's
// case: a streaming decoder acts at the closing brace), and not before
// the message's end when the class would pass uncounted.
func TestClassScanSettled(t *testing.T) {
	pol := &Policy{Classes: []Class{
		{Name: "legacy", Prefix: "!cmd:some-long-command-name"},
		{Name: "chat", FieldPath: []string{"type"}, FieldEquals: "chat"},
		{Name: "hb", FieldPath: []string{"type"}, FieldEquals: "ping", Unlimited: true},
	}}
	var s ClassScan
	steps := []struct {
		start   bool
		write   string
		settled bool
	}{
		{true, `{"type":`, false},
		{false, `"chat"`, false},
		{false, `}`, true},
		{true, `!cmd:some`, false}, // the prefix class may still match
		{false, `-long-command-name and more`, true},
		{true, `!cmd:x`, true},
		{true, `{"type":"ping"}`, false}, // uncounted unless something follows
		{false, "  \n", false},
		{false, `x`, true},
	}
	for i, st := range steps {
		if st.start {
			s.Start(pol)
		}
		s.Write([]byte(st.write))
		if got := s.Settled(); got != st.settled {
			t.Errorf("step %d (%q): Settled %v, want %v", i, st.write, got, st.settled)
		}
	}
	if class, _, _ := s.Class(); class != -1 {
		t.Errorf("a heartbeat with bytes after it: class %d, want -1", class)
	}
	// A prefix class listed after the class found cannot change it (the
	// fifth review's case).
	later := &Policy{Classes: []Class{
		{Name: "chat", FieldPath: []string{"type"}, FieldEquals: "chat"},
		{Name: "legacy", Prefix: `{"type":"chat"} and a long tail`},
	}}
	s.Start(later)
	if s.Write([]byte(`{"type":"chat"}`)); !s.Settled() {
		t.Error("a class found before a longer prefix class: not settled")
	}
}

// TestClassScanReuse checks that a scan started again forgets the last
// message's values.
func TestClassScanReuse(t *testing.T) {
	pol := scanPolicy()
	var s ClassScan
	first := []byte(`{"type":"chat","x":"` + strings.Repeat("y", 600) + `"}`)
	s.Start(pol)
	s.Write(first)
	if c, _, ok := s.Class(); !ok || c != 0 {
		t.Fatalf("first message: class %d, %v", c, ok)
	}
	second := []byte(`{"x":"` + strings.Repeat("y", 600) + `"}`)
	s.Start(pol)
	s.Write(second)
	if c, _, ok := s.Class(); !ok || c != -1 {
		t.Fatalf("second message: class %d, %v; want -1", c, ok)
	}
}

func TestClassScanEvents(t *testing.T) {
	cases := []struct {
		name  string
		msg   string
		class int
	}{
		{"a long ack id", `42` + strings.Repeat("0", 600) + `["chat:send","hi"]`, 5},
		{"white space", `42` + strings.Repeat(" ", 300) + `[` + strings.Repeat("\n", 300) + `"typing"]`, 7},
		{"JavaScript white space in the ack id", "42" + strings.Repeat("\u00a0\u2028", 100) + `["typing",1]`, 7},
		{"a namespace", `42/` + strings.Repeat("n", 600) + `,["chat:send"]`, 5},
		{"escaped", `42` + strings.Repeat("1", 600) + `["chat\u003asend"]`, 5},
		{"binary event", `45` + strings.Repeat("1", 600) + `-["chat:send",{"_placeholder":true,"num":0}]`, 5},
		{"binary event without the scan's class", `451-["other"]` + strings.Repeat(" ", 600), 6},
		{"binary event without a count", `45-` + strings.Repeat("0", 600) + `["chat:send"]`, 6}, // the prefix class
		{"another event", `42` + strings.Repeat("0", 600) + `["chat:sent"]`, -1},
		{"no name", `42` + strings.Repeat("0", 600) + `[17,"chat:send"]`, -1},
		{"a letter in the ack id", `42` + strings.Repeat("0", 600) + `x["chat:send"]`, -1},
		{"the name not ended", `42` + strings.Repeat("0", 600) + `["chat:send`, -1},
		{"not delimited", `42` + strings.Repeat("0", 600) + `["chat:send"x]`, -1},
	}
	pol := scanPolicy()
	for _, c := range cases {
		for _, step := range []int{1, 2, 5, 512, len(c.msg)} {
			class, also, ok := scanClass(pol, []byte(c.msg), step)
			if !ok || class != c.class || also != 0 {
				t.Errorf("%s (pieces of %d): class %d also %b, %v; want %d", c.name, step, class, also, ok, c.class)
			}
		}
		if name, ok := SocketIOEvent([]byte(c.msg)); c.class >= 0 && c.class != 6 && (!ok || !decodedEquals(name, pol.Classes[c.class].SocketIOEvent)) {
			t.Errorf("%s: SocketIOEvent on the whole packet: %q, %v", c.name, name, ok)
		}
	}
}

func TestNeedsClassScan(t *testing.T) {
	pol := scanPolicy()
	cases := []struct {
		head string
		want bool
	}{
		{`{"type":"chat","x":"yyy`, true},
		{`  {"type":"chat"}`, false}, // the object ends: the head settles it
		{`{"type":"chat"} `, false},
		{`["type"`, false},
		{`42["chat"`, true}, // the name may go on
		{`42` + strings.Repeat("0", 510), true},
		{`42["chat",`, false}, // named
		{`43["chat"`, false},  // an ack: no event
		// Too short to tell yet: nothing, white space, the engine.io
		// message's type, a prefix class's start.
		{``, true},
		{"  \n", true},
		{`4`, true},
		{`{"pr`, true},
		{`{"pre`, true}, // an object
		{`x`, false},
	}
	for _, c := range cases {
		if got := pol.NeedsClassScan([]byte(c.head)); got != c.want {
			t.Errorf("NeedsClassScan(%q) = %v", c.head, got)
		}
	}
	prefixOnly := &Policy{Classes: []Class{{Name: "p", Prefix: "!cmd"}}}
	for head, want := range map[string]bool{`{"a":"b`: false, `42["chat`: false, `!c`: true, `!cmd`: false, ``: true, `x`: false} {
		if got := prefixOnly.NeedsClassScan([]byte(head)); got != want {
			t.Errorf("prefix classes only: NeedsClassScan(%q) = %v", head, got)
		}
	}
}

// FuzzClassScan checks a ClassScan, fed in pieces, against encoding/json
// (which keeps the last of duplicate keys, as the apps' parsers do) on
// every JSON object the fuzzer makes.
func FuzzClassScan(f *testing.F) {
	pad := strings.Repeat("x", 520)
	for _, s := range []string{
		`{"type":"chat"}`,
		`{"pad":"` + pad + `","type":"chat"}`,
		`{"type":"ping","pad":"` + pad + `","type":"chat"}`,
		`{"data":{"kind":"x"},"pad":"` + pad + `","data":{"kind":"y"}}`,
		`{"pre":[1,{"type":"chat"}],"n":17,"\u0074ype":"ch\u0061t"}`,
		`{"n":"17","type":null,"data":{"kind":"x","kind":true}}`,
		`42` + strings.Repeat("0", 520) + `["chat:send","hi"]`,
		`42/chat,` + strings.Repeat(" ", 520) + `[ "typing" ]`,
		`451-/a,7["chat:send",{"_placeholder":true,"num":0}]`,
		"42\u00a0\u3000[\"ch\\u0061t:send\"]",
		`{"Type":"chat","type":"ping","TYPE":null,"n":1.7E1}`,
		`{"data":{"kind":"x"},"DATA":{"o":1},"daTa":null,"data":7}`,
	} {
		f.Add([]byte(s), uint8(7))
	}
	pol := scanPolicy()
	f.Fuzz(func(t *testing.T, msg []byte, step uint8) {
		class, also, ok := scanClass(pol, msg, int(step)+1)
		head := msg[:min(len(msg), 512)]
		if isEventPacket(head) {
			name, named := SocketIOEvent(msg)
			want := -1
			for i := range pol.Classes {
				c := &pol.Classes[i]
				if c.SocketIOEvent != "" && named && decodedEquals(name, c.SocketIOEvent) ||
					c.SocketIOEvent == "" && c.Matches(head) {
					want = i
					break
				}
			}
			if !ok || class != want || also != 0 {
				t.Fatalf("class %d also %b, %v; SocketIOEvent on the whole packet says %d: %q", class, also, ok, want, msg)
			}
			if c := pol.Classify(msg); c != class {
				t.Fatalf("Classify %d, the scan %d: %q", c, class, msg)
			}
			return
		}
		var top map[string]any
		dec := json.NewDecoder(bytes.NewReader(msg))
		dec.UseNumber()
		if !json.Valid(msg) || dec.Decode(&top) != nil || top == nil {
			return // not an object: any answer will do, as long as there is no panic
		}
		if !ok {
			t.Fatalf("a JSON object was not followed: %q", msg)
		}
		// The first class as JSON.parse (a map) and as Go structs see it:
		// one of plain fields (null keeps them), one of pointers (null
		// clears them).
		var st structRef
		_ = json.Unmarshal(msg, &st) // type errors leave fields as they were, as in an app
		var pt ptrRef
		_ = json.Unmarshal(msg, &pt)
		var ptrKind *fieldRef
		if pt.Data != nil {
			ptrKind = pt.Data.Kind
		}
		structVals := map[string]fieldRef{"type": st.Type, "data.kind": st.Data.Kind, "n": st.N}
		ptrVals := map[string]*fieldRef{"type": pt.Type, "data.kind": ptrKind, "n": pt.N}
		inMap, inStruct, inPtr := -1, -1, -1
		for i := range pol.Classes {
			c := &pol.Classes[i]
			var m, s, ps bool
			if len(c.FieldPath) == 0 {
				m = c.Matches(head)
				s, ps = m, m
			} else {
				path := strings.Join(c.FieldPath, ".")
				v, found := valueAt(top, c.FieldPath)
				m = found && valueEquals(v, c.FieldEquals)
				sv := structVals[path]
				s = sv.set && valueEquals(sv.text, c.FieldEquals)
				pv := ptrVals[path]
				ps = pv != nil && pv.set && valueEquals(pv.text, c.FieldEquals)
			}
			if m && inMap < 0 {
				inMap = i
			}
			if s && inStruct < 0 {
				inStruct = i
			}
			if ps && inPtr < 0 {
				inPtr = i
			}
		}
		charged := func(i int) bool { return i == class || also>>i&1 == 1 }
		for _, seen := range []int{inMap, inStruct, inPtr} {
			if seen >= 0 && !pol.Classes[seen].Unlimited && !charged(seen) {
				t.Fatalf("class %d also %b: a parser sees class %d (map %d, struct %d, pointers %d): %q", class, also, seen, inMap, inStruct, inPtr, msg)
			}
		}
		if class >= 0 && pol.Classes[class].Unlimited && (inMap != class || inStruct != class || inPtr != class) {
			t.Fatalf("unlimited class %d, but the map sees %d, a struct %d, pointers %d: %q", class, inMap, inStruct, inPtr, msg)
		}
		if class != inMap && (class < 0 || !pol.Classes[class].Unlimited) && inMap >= 0 && !pol.Classes[inMap].Unlimited {
			t.Fatalf("class %d, the map (JSON.parse) sees %d: %q", class, inMap, msg)
		}
	})
}

// structRef is scanPolicy's paths as a Go app declares them.
type structRef struct {
	Type fieldRef `json:"type"`
	Data struct {
		Kind fieldRef `json:"kind"`
	} `json:"data"`
	N fieldRef `json:"n"`
}

// ptrRef is structRef as pointers: null clears a field.
type ptrRef struct {
	Type *fieldRef `json:"type"`
	Data *struct {
		Kind *fieldRef `json:"kind"`
	} `json:"data"`
	N *fieldRef `json:"n"`
}

// fieldRef is a struct field of a scalar: null leaves it as it was, as it
// leaves a string or number field.
type fieldRef struct {
	set  bool
	text string
}

func (f *fieldRef) UnmarshalJSON(b []byte) error {
	switch {
	case string(b) == "null":
	case b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*f = fieldRef{true, s}
	case b[0] == '{' || b[0] == '[':
		return &json.UnmarshalTypeError{Value: "object", Type: nil}
	default:
		*f = fieldRef{true, string(b)}
	}
	return nil
}

// valueEquals compares a scalar's text with a class's value: numbers by
// value.
func valueEquals(text, want string) bool {
	if text == want {
		return true
	}
	a, errA := strconv.ParseFloat(text, 64)
	b, errB := strconv.ParseFloat(want, 64)
	return errA == nil && errB == nil && a == b && json.Valid([]byte(text))
}

// valueAt returns the text of the scalar at path in v: a string's value, or
// the literal text of a number, true, false or null.
func valueAt(v map[string]any, path []string) (string, bool) {
	for i, key := range path {
		x, ok := v[key]
		if !ok {
			return "", false
		}
		if i < len(path)-1 {
			if v, ok = x.(map[string]any); !ok {
				return "", false
			}
			continue
		}
		switch x := x.(type) {
		case string:
			return x, true
		case json.Number:
			return string(x), true
		case bool:
			if x {
				return "true", true
			}
			return "false", true
		case nil:
			return "null", true
		}
	}
	return "", false
}

// benchPolicy is rules6's classes: a socket.io event and a JSON-RPC method.
func benchPolicy() *Policy {
	return &Policy{Classes: []Class{
		{Name: "chat", SocketIOEvent: "chat:send"},
		{Name: "subscribe", FieldPath: []string{"method"}, FieldEquals: "subscribe"},
	}}
}

func BenchmarkClassOf(b *testing.B) {
	pol := benchPolicy()
	for _, c := range []struct {
		name  string
		msg   []byte
		class int
	}{
		{"SocketIO512", socketIO512(), 0},
		{"JSON512", json512(), 1},
		{"JSONSmall", []byte(`{"jsonrpc":"2.0","id":7,"method":"subscribe","params":["news"]}`), 1},
	} {
		b.Run("ClassOf"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(c.msg)))
			for b.Loop() {
				if class, _ := pol.ClassOf(c.msg); class != c.class {
					b.Fatal("wrong class")
				}
			}
		})
		b.Run("Classify"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(c.msg)))
			for b.Loop() {
				if pol.Classify(c.msg) != c.class {
					b.Fatal("wrong class")
				}
			}
		})
	}
}
