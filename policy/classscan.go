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
// The apps' JSON parsers do not agree on duplicates. JavaScript's
// JSON.parse, Python's json and Go's encoding/json into a map keep the last
// member of a name, null included, and an object named twice replaces the
// first (the reading that decides the class, as the first bytes' did); Go's
// decoder into a struct matches names in any case and, by the field's type,
// keeps, merges or clears what a name given again, a null or a value of the
// wrong type would replace. Rather than follow each, the scan also keeps
// every value a member of a path's names takes anywhere in the message,
// names matched in any case, through every object named on the way: a
// limited class whose value is among them is charged too (Class's also),
// and an unlimited class holds only when every reading agrees: its value as
// written and of its type, no name twice or in another case, no other value
// on its path, no limited class among them, nothing after the object.
// Otherwise numbers compare by value (17.0 is 17) up to maxNumber
// characters, and bytes after the object change nothing. A class whose value is a Go zero value (0, "", false) is not
// found where a member is absent, though a Go struct reads it so.
//
// The scan of an object is lenient where it can be and gives up where it
// cannot: it follows strings (escapes included), the members of the objects
// on the classes' paths and the nesting of everything else, without checking
// the syntax of what it skips. Any byte it cannot place within the object
// makes the message not JSON, which every parser refuses: no json-field class
// matches. Bytes after the object do not change a limited class (Go's
// json.Decoder, as gorilla/websocket's ReadJSON uses it, stops at the
// object's end); they take an unlimited class's free pass away.

// MaxFieldDepth bounds the keys of a json-field path: the scan keeps the
// paths still open at each depth.
const MaxFieldDepth = 16

// maxNumber is the longest number literal a scan compares by value; a
// longer one may round to any class's number.
const maxNumber = 64

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

// The two readings the scan follows (its comment): the one that decides
// the class, and every value any parser could see.
const (
	lastReading = iota
	anyReading
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
	valCap   int        // the longest raw string that can equal a class's value
	nameCap  int        // the longest raw event name that can equal a class's
	firstCap int        // the first bytes the prefix classes need
	unknown  bool       // pol has more classes or deeper paths than a scan follows
	on       []uint64   // per path, its classes
	same     []uint64   // per class, the classes of its path with its value
	numbers  uint64     // the classes whose value is a number
	literal  uint64     // the classes whose value is a number, true, false or null
	ascii    bool       // every path's keys are ASCII: no key shorter than one can match it

	first []byte // the message's first bytes, up to firstCap
	ev    eventScan

	state    scanState
	esc      bool                         // the last byte in a string was an unpaired backslash
	depth    int                          // objects open on the way from the top level
	skip     int                          // nesting inside scanSkip
	last     []scanned                    // per path, its value in the last reading
	seen     []uint64                     // per path, the classes whose value it took in any reading
	other    []bool                       // per path, whether it took another value (null, an object, ...)
	named    []uint32                     // per path, the depths at which a member of its names was read
	twice    bool                         // a name came twice at one depth, or in another case: parsers may disagree
	trailing bool                         // bytes other than white space followed the object
	onPath   [2][MaxFieldDepth + 1]uint64 // per reading and depth, the paths whose keys name the open objects
	member   [2]uint64                    // per reading, the paths the current key continues or ends
	capt     [2]uint64                    // per reading, the paths whose value is being captured
	key      []byte
	keyLen   int // raw length of the current key, past the capture too
	val      []byte
	valLen   int
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

// ClassOf returns the class of the whole message msg, and the classes it
// may also be, as a scan of it gives them (ClassScan.Class).
func (p *Policy) ClassOf(msg []byte) (class int, also uint64) {
	if i := skipJSONSpace(msg, 0); i == len(msg) || msg[i] != '{' || !p.has(func(c *Class) bool { return len(c.FieldPath) > 0 }) {
		// No object, or no class reads one: the prefix reading is the
		// scan's (FuzzClassScan holds them to it).
		return p.Classify(msg), 0
	}
	s := NewClassScan(p)
	defer s.Release()
	s.Write(msg)
	class, also, ok := s.Class()
	if !ok {
		return p.Classify(msg), 0
	}
	return class, also
}

// scans keeps the scans not in use: a scan's slices stay sized for the
// policy it last served.
var scans = sync.Pool{New: func() any { return new(ClassScan) }}

// NewClassScan returns a scan, Started for a message of pol's; Release
// gives it back.
func NewClassScan(pol *Policy) *ClassScan {
	s := scans.Get().(*ClassScan)
	s.Start(pol)
	return s
}

// Release gives s back for another message; s is not used after.
func (s *ClassScan) Release() { scans.Put(s) }

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
	for p := range s.paths {
		s.last[p].set, s.seen[p], s.other[p], s.named[p] = false, 0, false, 0
	}
	s.twice, s.trailing = false, false
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
	s.ascii, s.literal = true, 0
	s.unknown = len(pol.Classes) > MaxClasses
	for i := range pol.Classes[:min(len(pol.Classes), MaxClasses)] {
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
			s.ascii = s.ascii && isASCII(key)
		}
		s.valCap = max(s.valCap, rawCap(c.FieldEquals))
	}
	if len(s.paths) > MaxClasses || s.unknown {
		s.unknown = true
		s.paths = s.paths[:0]
	}
	n := len(s.paths)
	s.last, s.seen, s.other, s.named = make([]scanned, n), make([]uint64, n), make([]bool, n), make([]uint32, n)
	s.on, s.same, s.numbers = make([]uint64, n), make([]uint64, len(pol.Classes)), 0
	for i, p := range s.pathOf {
		if p < 0 || p >= n {
			continue
		}
		c := &pol.Classes[i]
		s.on[p] |= 1 << i
		if _, ok := scanJSONNumber([]byte(c.FieldEquals), 0); ok {
			s.numbers |= 1 << i
		}
		if isLiteral(c.FieldEquals) {
			s.literal |= 1 << i
		}
		for k, q := range s.pathOf {
			if q == p && pol.Classes[k].FieldEquals == c.FieldEquals {
				s.same[i] |= 1 << k
			}
		}
	}
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// rawCap is the longest a JSON string's raw bytes can be and still decode
// to s: six bytes (\u0041) for each byte of s.
func rawCap(s string) int { return 6 * len(s) }

// Settled reports whether no byte after those written can change the
// class: the object ended (or is no object), the event's name is known (or
// there is none), and the prefix classes have their bytes.
func (s *ClassScan) Settled() bool {
	if s.ev.state < evNamed || s.state < scanDone {
		return false
	}
	class, _, _ := s.Class()
	if s.state == scanDone && !s.trailing && class >= 0 && s.pol.Classes[class].Unlimited {
		// A message that would pass uncounted is followed to its end:
		// bytes after the object take that away (strict parsers refuse it).
		return false
	}
	return s.prefixSettled(class)
}

// prefixSettled reports whether the first bytes kept settle the prefix
// classes listed before class (all of them when it is -1): enough of
// them, or none that a longer prefix still starts with.
func (s *ClassScan) prefixSettled(class int) bool {
	if len(s.first) >= s.firstCap {
		return true
	}
	for i := range s.pol.Classes {
		if class >= 0 && i >= class {
			break
		}
		if c := s.pol.Classes[i].Prefix; len(c) > len(s.first) && c[:len(s.first)] == string(s.first) {
			return false
		}
	}
	return true
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
	i := 0
	for i < len(b) && s.state < scanDone {
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
	for ; s.state == scanDone && !s.trailing && i < len(b); i++ {
		s.trailing = !isJSONSpace(b[i])
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
			s.otherValue()
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
		part, next, closed := s.inString(b, i)
		s.keep(&s.key, &s.keyLen, s.keyCap, part)
		if closed {
			s.keyEnded()
		}
		return next
	case scanColon:
		switch {
		case isJSONSpace(c):
		case c == ':':
			s.state = scanValue
		default:
			s.state = scanBroken
		}
	case scanString:
		part, next, closed := s.inString(b, i)
		if s.capt != [2]uint64{} {
			s.keep(&s.val, &s.valLen, s.valCap, part)
		}
		if closed {
			s.valueEnded(true)
		}
		return next
	case scanLiteral:
		j := i
		for j < len(b) && !isJSONSpace(b[j]) && b[j] != ',' && b[j] != '}' && b[j] != ']' {
			j++
		}
		if s.capt != [2]uint64{} {
			s.keep(&s.val, &s.valLen, max(s.valCap, maxNumber), b[i:j])
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
		_, next, closed := s.inString(b, i)
		if closed {
			s.state = scanSkip
		}
		return next
	default: // scanDone, scanBroken
		return len(b)
	}
	return i + 1
}

// inString walks the string s is in from b[i]: it returns the string's
// bytes it passed (escapes raw, the closing quote left out), the index of
// the next byte to handle, and whether the closing quote came.
func (s *ClassScan) inString(b []byte, i int) (part []byte, next int, closed bool) {
	j := i
	for j < len(b) {
		if s.esc {
			s.esc = false
			j++
			continue
		}
		if k := skipPlain(b, j); k > j {
			j = k
			continue
		}
		switch b[j] {
		case '\\':
			s.esc = true
		case '"':
			return b[i:j], j + 1, true
		}
		j++
	}
	return b[i:j], j, false
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
	s.otherValue()
	var next [2]uint64
	for m := range next {
		if s.depth == 0 {
			next[m] = 1<<len(s.paths) - 1
			continue
		}
		for b := s.member[m]; b != 0; b &= b - 1 {
			if p := lowest(b); len(s.paths[p]) > s.depth {
				next[m] |= 1 << p
			}
		}
	}
	if next == [2]uint64{} || s.depth == MaxFieldDepth {
		s.state, s.skip = scanSkip, 1
		return
	}
	s.depth++
	s.onPath[lastReading][s.depth], s.onPath[anyReading][s.depth] = next[0], next[1]
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
// exact name in the last reading, where a new member of a path's name
// replaces the old one (what the path had found through it is forgotten),
// and by its name in any case in the other, where nothing is forgotten.
func (s *ClassScan) keyEnded() {
	s.state = scanColon
	s.member = [2]uint64{}
	if s.keyLen > s.keyCap {
		return
	}
	inLast, inAny := s.onPath[lastReading][s.depth], s.onPath[anyReading][s.depth]
	for b := inLast | inAny; b != 0; b &= b - 1 {
		p := lowest(b)
		bit := uint64(1) << p
		want := s.paths[p][s.depth-1]
		if s.ascii && s.keyLen < len(want) {
			// Each byte of an ASCII name is a character of the key, in
			// any case or escaped: at least as many bytes.
			continue
		}
		exact := decodedEquals(s.key, want)
		if exact && inLast&bit != 0 {
			s.member[lastReading] |= bit
			s.last[p].set = false
		}
		if inAny&bit != 0 && (exact || foldEquals(s.key, want)) {
			s.member[anyReading] |= bit
			d := uint32(1) << s.depth
			s.twice = s.twice || !exact || s.named[p]&d != 0
			s.named[p] |= d
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
			if p := lowest(b); len(s.paths[p]) == s.depth {
				s.capt[m] |= 1 << p
			}
		}
	}
	s.val, s.valLen = s.val[:0], 0
}

// valueEnded records a captured value for the paths it ends: in the last
// reading as their value (a value too long to equal any class's matches
// none), in the other among their values.
func (s *ClassScan) valueEnded(str bool) {
	s.state = scanAfter
	if s.depth == 0 {
		s.state = scanBroken
	}
	limit := s.valCap
	if !str {
		limit = max(s.valCap, maxNumber)
	}
	v := scanned{set: s.valLen <= limit, str: str, raw: s.val}
	for b := s.capt[lastReading]; b != 0; b &= b - 1 {
		l := &s.last[lowest(b)]
		l.set, l.str, l.raw = v.set, str, append(l.raw[:0], s.val...)
	}
	for b := s.capt[anyReading]; b != 0; b &= b - 1 {
		p := lowest(b)
		var eq uint64
		switch {
		case v.set:
			for c := s.on[p]; c != 0; c &= c - 1 {
				if i := lowest(c); v.equals(s.pol.Classes[i].FieldEquals) {
					eq |= 1 << i
				}
			}
		case !str:
			// A number too long to keep may be any of them.
			eq = s.on[p] & s.numbers
		}
		s.seen[p] |= eq
		if eq == 0 || !v.set {
			s.other[p] = true
		}
	}
	s.capt = [2]uint64{}
}

// otherValue records that the member whose value starts here, an object
// or an array, gives the paths it ends a value no class has.
func (s *ClassScan) otherValue() {
	if s.depth == 0 {
		return
	}
	for b := s.member[anyReading]; b != 0; b &= b - 1 {
		if p := lowest(b); len(s.paths[p]) == s.depth {
			s.other[p] = true
		}
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

// exactly reports whether v is the value want as written and of the type it
// looks like (literal: a number, true, false or null, else a string).
// Typed readers (o.op === 1, a Go int field) do not take "1" or 1.0 for 1.
func (v *scanned) exactly(want string, literal bool) bool {
	switch {
	case !v.set:
		return false
	case literal:
		return !v.str && string(v.raw) == want
	}
	return v.str && decodedEquals(v.raw, want)
}

// isLiteral reports whether s is a whole JSON number, true, false or null.
func isLiteral(s string) bool {
	if s == "" || s[0] == '"' {
		return false
	}
	end, ok := scanJSONScalar([]byte(s), 0)
	return ok && end == len(s)
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
// want without regard to case: each character compared as
// unicode.ToUpper(unicode.ToLower(r)), which matches whatever Go's
// encoding/json matches to a struct field's name (and a few more).
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

// fold is the character foldEquals compares.
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
// its path's last member has the class's value (an unlimited class only
// when its path took no other value anywhere), a socketio-event class when
// the packet is its event, a prefix class when the first bytes start with
// it. also holds the limited json-field classes whose value a member of
// their path's names took, when the last reading does not give them that
// value, or when a name came twice or in another case anywhere on a path
// (the parsers may then disagree on the first match): some parser may see
// them. ok is false when pol has more classes or deeper paths than a scan
// follows.
func (s *ClassScan) Class() (class int, also uint64, ok bool) {
	if s.unknown {
		return 0, 0, false
	}
	done := s.state == scanDone
	class = -1
	for i := range s.pol.Classes {
		c := &s.pol.Classes[i]
		var match bool
		switch {
		case len(c.FieldPath) > 0:
			if !done {
				continue
			}
			p := s.pathOf[i]
			inLast := s.last[p].equals(c.FieldEquals)
			// An unlimited class: its value as written and of the type it
			// looks like, no other value on its path, no name twice or in
			// another case anywhere (an object named again may be cleared
			// by null for a pointer field), nothing after the object.
			match = inLast && (!c.Unlimited || s.last[p].exactly(c.FieldEquals, s.literal>>i&1 == 1) &&
				!s.twice && !s.trailing && !s.other[p] && s.seen[p]&^s.same[i] == 0)
			if (!inLast || s.twice) && !c.Unlimited && s.seen[p]&(1<<i) != 0 {
				also |= 1 << i
			}
		case c.SocketIOEvent != "":
			match = s.ev.named(c.SocketIOEvent)
		default:
			match = len(s.first) >= len(c.Prefix) && string(s.first[:len(c.Prefix)]) == c.Prefix
		}
		if match && class < 0 {
			class = i
		}
	}
	if class >= 0 {
		also &^= 1 << class
		if also != 0 && s.pol.Classes[class].Unlimited {
			class = -1 // some parser sees a limited class: not free
		}
	}
	return class, also, true
}

// lowest is the index of the lowest bit set in m.
func lowest(m uint64) int { return bits.TrailingZeros64(m) }
