package policy

import (
	"math/bits"
	"slices"
	"strconv"
	"sync"
	"unicode"
	"unicode/utf8"
)

// Following a message past its first bytes. The classes are decided from a
// message's first bytes, before any of it goes upstream, and those bytes do
// not always settle them: in a JSON object a json-field class's member may
// come later, or come again; in a socket.io event packet the name may come
// after a long ack id or white space; a short first fragment may hold too
// little of anything. A ClassScan reads the whole message as it is relayed
// and gives the class the app will see, so that the gate can charge it to
// the rules of that class before the app can act on the message.
//
// The apps' JSON parsers do not agree on duplicates: JavaScript's
// JSON.parse, Python's json and Go's encoding/json into a map keep the last
// member of a name, null included (map semantics), while Go's decoder into
// a struct matches names without regard to case, lets null leave a field as
// it was, and merges an object named twice (struct semantics). The scan
// follows both: a limited class matches when either finds its value, an
// unlimited one only when both do. Numbers compare by value (17.0 is 17).
//
// The scan of an object is lenient where it can be and gives up where it
// cannot: it follows strings (escapes included), the members of the objects
// on the classes' paths and the nesting of everything else, without checking
// the syntax of what it skips. Any byte it cannot place within the object
// makes the message not JSON, which every parser refuses: no json-field class
// matches. Bytes after the object are not looked at (Go's json.Decoder, as
// gorilla/websocket's ReadJSON uses it, stops at the object's end).

// MaxFieldDepth bounds the keys of a json-field path: the scan keeps the
// paths still open at each depth.
const MaxFieldDepth = 16

// maxFirstBytes bounds the first bytes of a message a scan keeps for its
// prefix classes: the 512 the gate classifies from.
const maxFirstBytes = 512

type scanState uint8

const (
	scanValue   scanState = iota // a member's value (or the top-level value) comes next
	scanKey                      // a key or the object's '}' comes next
	scanKeyStr                   // in a key
	scanColon                    // a key ended: its ':' comes next
	scanString                   // in a string value
	scanLiteral                  // in a number, true, false or null
	scanAfter                    // a value ended: ',' or '}' comes next
	scanSkip                     // in an array or object that no path enters (skip counts its nesting)
	scanSkipStr                  // in a string inside it
	scanDone                     // the top-level object ended
	scanBroken                   // not a JSON object
)

// The two ways parsers read duplicates (the scan's comment).
const (
	mapSemantics = iota
	structSemantics
)

// scanned is the value a path's member has for one semantics.
type scanned struct {
	set bool   // a scalar no longer than the capture
	str bool   // a string: raw holds what is between its quotes, escapes not decoded
	raw []byte // the literal's text or the string's raw bytes
}

// A ClassScan follows a message's bytes, written in order from its first,
// for the classes its first bytes could not settle: the members on the
// json-field paths of a policy, a socket.io event's name, and the first
// bytes a prefix class needs. Start it, Write every byte of the message (or
// up to Settled), then ask Class. It is reused from message to message; one
// goroutine uses it.
type ClassScan struct {
	pol      *Policy
	paths    [][]string // the distinct json-field paths of pol
	pathOf   []int      // for each class, its path's index, or -1
	keyCap   int        // the longest raw key that can equal a path's key
	valCap   int        // the longest raw value that can equal a class's value
	nameCap  int        // the longest raw event name that can equal a class's
	firstCap int        // the first bytes the prefix classes need
	unknown  bool       // pol has more classes or deeper paths than a scan follows

	first []byte // the message's first bytes, up to firstCap
	ev    eventScan

	state  scanState
	esc    bool // the last byte in a string was an unpaired backslash
	depth  int  // objects open on the way from the top level
	skip   int  // nesting inside scanSkip
	vals   [2][]scanned
	onPath [2][MaxFieldDepth + 1]uint64 // paths whose keys so far name the open objects, per depth
	member [2]uint64                    // paths the current key continues or ends
	capt   [2]uint64                    // paths whose value is being captured
	key    []byte
	keyLen int // raw length of the current key, past the capture too
	val    []byte
	valLen int
}

// NeedsClassScan reports whether the class of a message whose first bytes
// are head, with more to come, can be changed by its later bytes: a
// json-field class and a head that is white space or opens a JSON object
// that does not end within it; a socketio-event class and a head that is,
// or can still become, a socket.io EVENT or BINARY_EVENT packet whose name
// it does not hold; a prefix class longer than head that head begins.
func (p *Policy) NeedsClassScan(head []byte) bool {
	var object, event, prefix bool
	for i := range p.Classes {
		c := &p.Classes[i]
		switch {
		case len(c.FieldPath) > 0:
			object = true
		case c.SocketIOEvent != "":
			event = true
		case len(head) < len(c.Prefix) && c.Prefix[:len(head)] == string(head):
			prefix = true
		}
	}
	if prefix || event && eventOpen(head) {
		return true
	}
	if !object {
		return false
	}
	i := skipJSONSpace(head, 0)
	if i == len(head) {
		return true
	}
	if head[i] != '{' {
		return false
	}
	_, whole := skipJSONValue(head, i)
	return !whole
}

// eventOpen reports whether head is, or may still become, an engine.io
// message carrying a socket.io EVENT or BINARY_EVENT packet whose name it
// does not hold.
func eventOpen(head []byte) bool {
	switch {
	case len(head) == 0:
		return true
	case len(head) == 1:
		return head[0] == '4'
	case !isEventPacket(head):
		return false
	}
	_, named := SocketIOEvent(head)
	return !named
}

// isEventPacket reports whether b starts as an engine.io message carrying a
// socket.io EVENT or BINARY_EVENT packet does.
func isEventPacket(b []byte) bool {
	return len(b) >= 2 && b[0] == '4' && (b[1] == '2' || b[1] == '5')
}

// ClassOf returns the class of the whole message msg, as a scan of it
// gives: the first class msg matches, or -1.
func (p *Policy) ClassOf(msg []byte) int {
	if !p.has(func(c *Class) bool { return len(c.FieldPath) > 0 }) {
		return p.Classify(msg) // no semantics to choose between
	}
	s := scans.Get().(*ClassScan)
	defer scans.Put(s)
	s.Start(p)
	s.Write(msg)
	class, ok := s.Class()
	if !ok {
		return p.Classify(msg)
	}
	return class
}

// scans serve ClassOf.
var scans = sync.Pool{New: func() any { return new(ClassScan) }}

// has reports whether a class of p's is so.
func (p *Policy) has(so func(*Class) bool) bool {
	for i := range p.Classes {
		if so(&p.Classes[i]) {
			return true
		}
	}
	return false
}

// Start readies s for a message of pol's.
func (s *ClassScan) Start(pol *Policy) {
	if s.pol != pol {
		s.index(pol)
	}
	s.first = s.first[:0]
	s.ev.start(s.nameCap)
	for m := range s.vals {
		for i := range s.vals[m] {
			s.vals[m][i].set = false
		}
	}
	s.state, s.esc, s.depth, s.skip = scanValue, false, 0, 0
	s.member, s.capt = [2]uint64{}, [2]uint64{}
	if len(s.paths) == 0 {
		s.state = scanBroken // no json-field class: nothing to follow
	}
	if s.nameCap == 0 {
		s.ev.state = evNone
	}
}

// index finds pol's distinct paths and what a raw key or value can be.
func (s *ClassScan) index(pol *Policy) {
	s.pol = pol
	s.paths, s.pathOf = s.paths[:0], s.pathOf[:0]
	s.keyCap, s.valCap, s.nameCap, s.firstCap = 0, 0, 0, 0
	s.unknown = len(pol.Classes) > MaxClasses
	for i := range pol.Classes {
		c := &pol.Classes[i]
		s.nameCap = max(s.nameCap, rawCap(c.SocketIOEvent))
		s.firstCap = max(s.firstCap, min(len(c.Prefix), maxFirstBytes))
		if len(c.FieldPath) == 0 {
			s.pathOf = append(s.pathOf, -1)
			continue
		}
		if len(c.FieldPath) > MaxFieldDepth {
			s.unknown = true
		}
		k := slices.IndexFunc(s.paths, func(p []string) bool { return slices.Equal(p, c.FieldPath) })
		if k < 0 {
			k = len(s.paths)
			s.paths = append(s.paths, c.FieldPath)
		}
		s.pathOf = append(s.pathOf, k)
		for _, key := range c.FieldPath {
			s.keyCap = max(s.keyCap, rawCap(key))
		}
		s.valCap = max(s.valCap, rawCap(c.FieldEquals))
	}
	if len(s.paths) > MaxClasses {
		s.unknown = true
		s.paths = s.paths[:MaxClasses]
	}
	for m := range s.vals {
		s.vals[m] = make([]scanned, len(s.paths))
	}
}

// rawCap is the longest a JSON string's raw bytes can be and still decode
// to s: six bytes (\u0041) for each byte of s.
func rawCap(s string) int { return 6 * len(s) }

// Settled reports whether no byte after those written can change the
// class: the object ended (or is no object), the event's name is known (or
// there is none), and the prefix classes have their bytes.
func (s *ClassScan) Settled() bool {
	return len(s.first) >= s.firstCap && s.state >= scanDone && s.ev.state >= evNamed
}

// Write follows the message through b, the bytes after those written
// before.
func (s *ClassScan) Write(b []byte) {
	if n := len(s.first); n < s.firstCap {
		s.first = append(s.first, b[:min(len(b), s.firstCap-n)]...)
	}
	if s.ev.state < evNamed {
		s.ev.write(b)
	}
	for i := 0; i < len(b) && s.state < scanDone; {
		if s.state == scanValue || s.state == scanKey || s.state == scanColon || s.state == scanAfter {
			// White space between tokens, in bulk.
			for i < len(b) && isJSONSpace(b[i]) {
				i++
			}
			if i == len(b) {
				return
			}
		}
		i = s.step(b, i)
	}
}

// step handles b[i] (and any bytes after it it can take at once) and
// returns the index of the next byte to handle.
func (s *ClassScan) step(b []byte, i int) int {
	c := b[i]
	switch s.state {
	case scanValue:
		switch {
		case isJSONSpace(c):
			return i + 1
		case c == '{':
			s.open()
		case c == '[':
			s.state, s.skip = scanSkip, 1
		case c == '"':
			s.startValue(scanString)
		case s.depth == 0:
			// A top-level scalar: no member at all.
			s.state = scanBroken
		default:
			s.startValue(scanLiteral)
			return i // the literal's first byte is its own
		}
	case scanKey:
		switch {
		case isJSONSpace(c):
		case c == '"':
			s.state, s.key, s.keyLen = scanKeyStr, s.key[:0], 0
		case c == '}':
			s.close()
		default:
			s.state = scanBroken
		}
	case scanKeyStr:
		j := i
		if !s.esc {
			j = skipPlain(b, i)
		}
		if j > i {
			s.keep(&s.key, &s.keyLen, s.keyCap, b[i:j])
			return j
		}
		switch {
		case s.esc:
			s.esc = false
		case c == '\\':
			s.esc = true
		case c == '"':
			s.keyEnded()
			return i + 1
		}
		s.keep(&s.key, &s.keyLen, s.keyCap, b[i:i+1])
	case scanColon:
		switch {
		case isJSONSpace(c):
		case c == ':':
			s.state = scanValue
		default:
			s.state = scanBroken
		}
	case scanString:
		j := i
		if !s.esc {
			j = skipPlain(b, i)
		}
		if j > i {
			if s.capt != [2]uint64{} {
				s.keep(&s.val, &s.valLen, s.valCap, b[i:j])
			}
			return j
		}
		switch {
		case s.esc:
			s.esc = false
		case c == '\\':
			s.esc = true
		case c == '"':
			s.valueEnded(true)
			return i + 1
		}
		if s.capt != [2]uint64{} {
			s.keep(&s.val, &s.valLen, s.valCap, b[i:i+1])
		}
	case scanLiteral:
		j := i
		for j < len(b) && !isJSONSpace(b[j]) && b[j] != ',' && b[j] != '}' && b[j] != ']' {
			j++
		}
		if s.capt != [2]uint64{} {
			s.keep(&s.val, &s.valLen, s.valCap, b[i:j])
		}
		if j < len(b) {
			s.valueEnded(false) // the delimiter at b[j] is the next state's
		}
		return j
	case scanAfter:
		switch {
		case isJSONSpace(c):
		case c == ',':
			s.state = scanKey
		case c == '}':
			s.close()
		default:
			s.state = scanBroken
		}
	case scanSkip:
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				s.state = scanSkipStr
				return i + 1
			case '{', '[':
				s.skip++
			case '}', ']':
				if s.skip--; s.skip == 0 {
					s.state = scanAfter
					if s.depth == 0 {
						s.state = scanBroken // a top-level array
					}
					return i + 1
				}
			}
		}
		return i
	case scanSkipStr:
		j := i
		if !s.esc {
			j = skipPlain(b, i)
		}
		if j > i {
			return j
		}
		switch {
		case s.esc:
			s.esc = false
		case c == '\\':
			s.esc = true
		case c == '"':
			s.state = scanSkip
		}
	default: // scanDone, scanBroken
		return len(b)
	}
	return i + 1
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// keep appends p to *buf up to limit bytes, and counts all of it in *n.
func (s *ClassScan) keep(buf *[]byte, n *int, limit int, p []byte) {
	if room := limit - len(*buf); room > 0 {
		*buf = append(*buf, p[:min(room, len(p))]...)
	}
	*n += len(p)
}

// open enters an object value: the top level, or a member's value, which
// the paths the member continues go into. An object no path enters is
// skipped whole.
func (s *ClassScan) open() {
	var next [2]uint64
	for m := range next {
		if s.depth == 0 {
			next[m] = 1<<len(s.paths) - 1
			continue
		}
		for b := s.member[m]; b != 0; b &= b - 1 {
			if p := trailing(b); len(s.paths[p]) > s.depth {
				next[m] |= 1 << p
			}
		}
	}
	if next == [2]uint64{} || s.depth == MaxFieldDepth {
		s.state, s.skip = scanSkip, 1
		return
	}
	s.depth++
	s.onPath[mapSemantics][s.depth], s.onPath[structSemantics][s.depth] = next[0], next[1]
	s.state = scanKey
}

// close ends the innermost object.
func (s *ClassScan) close() {
	s.depth--
	s.state = scanAfter
	if s.depth == 0 {
		s.state = scanDone
	}
}

// keyEnded finds the paths the key just read names at this depth: by its
// exact name, and (struct semantics) by its name without regard to case. In
// map semantics a new member of a path's name replaces the old one: what
// the path had found through the old one is forgotten; in struct semantics
// only a value that is not null replaces anything.
func (s *ClassScan) keyEnded() {
	s.state = scanColon
	s.member = [2]uint64{}
	if s.keyLen > s.keyCap {
		return
	}
	inMap, inStruct := s.onPath[mapSemantics][s.depth], s.onPath[structSemantics][s.depth]
	for b := inMap | inStruct; b != 0; b &= b - 1 {
		p := trailing(b)
		bit := uint64(1) << p
		want := s.paths[p][s.depth-1]
		exact := decodedEquals(s.key, want)
		if exact && inMap&bit != 0 {
			s.member[mapSemantics] |= bit
			s.vals[mapSemantics][p].set = false
		}
		if inStruct&bit != 0 && (exact || foldEquals(s.key, want)) {
			s.member[structSemantics] |= bit
		}
	}
}

// startValue begins a string or literal member value, captured for the
// paths it ends.
func (s *ClassScan) startValue(st scanState) {
	s.state = st
	for m := range s.capt {
		s.capt[m] = 0
		for b := s.member[m]; b != 0; b &= b - 1 {
			if p := trailing(b); len(s.paths[p]) == s.depth {
				s.capt[m] |= 1 << p
			}
		}
	}
	s.val, s.valLen = s.val[:0], 0
}

// valueEnded records a captured value for the paths it ends. A value too
// long to equal any class's is recorded as a value that matches none.
func (s *ClassScan) valueEnded(str bool) {
	s.state = scanAfter
	if s.depth == 0 {
		s.state = scanBroken
	}
	long := s.valLen > s.valCap
	null := !str && string(s.val) == "null"
	for m := range s.capt {
		if m == structSemantics && null {
			continue // null leaves a struct's field as it was
		}
		for b := s.capt[m]; b != 0; b &= b - 1 {
			v := &s.vals[m][trailing(b)]
			v.set, v.str, v.raw = !long, str, append(v.raw[:0], s.val...)
		}
		s.capt[m] = 0
	}
}

// equals reports whether v is the value want: a string with its escapes
// decoded, a literal as written, or a number by value.
func (v *scanned) equals(want string) bool {
	switch {
	case !v.set:
		return false
	case v.str:
		return decodedEquals(v.raw, want)
	case string(v.raw) == want:
		return true
	}
	return numbersEqual(v.raw, want)
}

// numbersEqual reports whether the JSON number lit and the number want
// (as a class writes it) are the same number, as JavaScript compares them.
func numbersEqual(lit []byte, want string) bool {
	if _, ok := scanJSONNumber(lit, 0); !ok {
		return false
	}
	a, err := strconv.ParseFloat(string(lit), 64)
	if err != nil {
		return false
	}
	b, err := strconv.ParseFloat(want, 64)
	return err == nil && a == b
}

// foldEquals reports whether the JSON string raw (escapes not decoded) is
// want as Go's encoding/json matches a member to a struct field: each
// character compared as unicode.ToUpper(unicode.ToLower(r)).
func foldEquals(raw []byte, want string) bool {
	for len(raw) > 0 {
		var r rune
		n := 1
		switch {
		case raw[0] == '\\':
			if r, n = decodeJSONEscape(raw); n == 0 {
				return false
			}
		case raw[0] < utf8.RuneSelf:
			r = rune(raw[0])
		default:
			r, n = utf8.DecodeRune(raw)
		}
		w, wn := utf8.DecodeRuneInString(want)
		if wn == 0 || fold(r) != fold(w) {
			return false
		}
		raw, want = raw[n:], want[wn:]
	}
	return want == ""
}

// fold is the character encoding/json compares a struct field's name by.
func fold(r rune) rune {
	if r < utf8.RuneSelf {
		if 'a' <= r && r <= 'z' {
			r -= 'a' - 'A'
		}
		return r
	}
	return unicode.ToUpper(unicode.ToLower(r))
}

// Class returns the class the app sees in the message written: the first
// of pol's classes that its bytes match. A json-field class matches when
// its path's last member has the class's value (an unlimited class in both
// semantics, a limited one in either), a socketio-event class when the
// packet is its event, a prefix class when the first bytes start with it.
// ok is false when pol has more classes or deeper paths than a scan follows.
func (s *ClassScan) Class() (class int, ok bool) {
	if s.unknown {
		return 0, false
	}
	done := s.state == scanDone
	for i := range s.pol.Classes {
		c := &s.pol.Classes[i]
		var match bool
		switch {
		case len(c.FieldPath) > 0:
			if !done {
				continue
			}
			p := s.pathOf[i]
			inMap, inStruct := s.vals[mapSemantics][p].equals(c.FieldEquals), s.vals[structSemantics][p].equals(c.FieldEquals)
			match = inMap && inStruct || !c.Unlimited && (inMap || inStruct)
		case c.SocketIOEvent != "":
			match = s.ev.named(c.SocketIOEvent)
		default:
			match = len(s.first) >= len(c.Prefix) && string(s.first[:len(c.Prefix)]) == c.Prefix
		}
		if match {
			return i, true
		}
	}
	return -1, true
}

func trailing(m uint64) int { return bits.TrailingZeros64(m) }
