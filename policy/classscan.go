package policy

import "math/bits"

// Following a message past its first bytes. The classes are decided from a
// message's first bytes, before any of it goes upstream, and those bytes do
// not always settle them: in a JSON object a json-field class's member may
// come later, or come again (the last of duplicate keys wins in the app's
// parser); in a socket.io event packet the name may come after a long ack
// id or white space. A ClassScan reads the whole message as it is relayed
// and gives the class the app will see, so that the gate can charge it to
// the rules of that class before the message's last bytes go upstream.
//
// The scan of an object is lenient where it can be and gives up where it cannot: it
// follows strings (escapes included), the members of the objects on the
// classes' paths and the nesting of everything else, without checking the
// syntax of what it skips. Any byte it cannot place makes the message not
// JSON, which the app's parser refuses too: the class stays the head's.

// MaxFieldDepth bounds the keys of a json-field path: the scan keeps the
// paths still open at each depth.
const MaxFieldDepth = 16

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
	scanBroken                   // not JSON
)

// scanned is the last value a path's member had.
type scanned struct {
	set bool   // a scalar no longer than the capture
	str bool   // a string: raw holds what is between its quotes, escapes not decoded
	raw []byte // the literal's text or the string's raw bytes
}

// A ClassScan follows the members on the json-field paths of a policy, or
// a socket.io event's name, through a message's bytes, written in order
// from its first. Start it with the message's first bytes, Write every byte
// of the message, then ask Class. It is reused from message to message;
// one goroutine uses it.
type ClassScan struct {
	pol     *Policy
	paths   [][]string // the distinct json-field paths of pol
	pathOf  []int      // for each class, its path's index, or -1
	keyCap  int        // the longest raw key that can equal a path's key
	valCap  int        // the longest raw value that can equal a class's value
	nameCap int        // the longest raw event name that can equal a class's
	vals    []scanned
	head    uint64 // the classes the scan does not decide that the first bytes matched
	unknown bool   // pol has more classes or deeper paths than a scan follows

	events bool // the message is a socket.io packet: ev follows its event's name
	ev     eventScan

	state  scanState
	esc    bool                      // the last byte in a string was an unpaired backslash
	depth  int                       // objects open on the way from the top level
	skip   int                       // nesting inside scanSkip
	onPath [MaxFieldDepth + 1]uint64 // paths whose keys so far name the open objects, per depth
	member uint64                    // paths the current key continues or ends
	capt   uint64                    // paths whose value is being captured
	key    []byte
	keyLen int // raw length of the current key, past the capture too
	val    []byte
	valLen int
}

// NeedsClassScan reports whether the class of a message whose first bytes
// are head, with more to come, can be changed by its later bytes: pol has a
// json-field class and head opens a JSON object that does not end within
// head, or pol has a socketio-event class and head starts a socket.io
// EVENT or BINARY_EVENT packet whose name it does not hold.
func (p *Policy) NeedsClassScan(head []byte) bool {
	if isEventPacket(head) {
		_, named := SocketIOEvent(head)
		return !named && p.has(func(c *Class) bool { return c.SocketIOEvent != "" })
	}
	i := skipJSONSpace(head, 0)
	if i >= len(head) || head[i] != '{' || !p.has(func(c *Class) bool { return len(c.FieldPath) > 0 }) {
		return false
	}
	_, whole := skipJSONValue(head, i)
	return !whole
}

// isEventPacket reports whether b starts as an engine.io message carrying a
// socket.io EVENT or BINARY_EVENT packet does.
func isEventPacket(b []byte) bool {
	return len(b) >= 2 && b[0] == '4' && (b[1] == '2' || b[1] == '5')
}

// has reports whether a class of p's is so.
func (p *Policy) has(so func(*Class) bool) bool {
	for i := range p.Classes {
		if so(&p.Classes[i]) {
			return true
		}
	}
	return false
}

// decides reports whether the scan, rather than the first bytes, decides
// class c.
func (s *ClassScan) decides(c *Class) bool {
	if s.events {
		return c.SocketIOEvent != ""
	}
	return len(c.FieldPath) > 0
}

// Start readies s for a message of pol's whose first bytes are head (those
// bytes are written again with the rest).
func (s *ClassScan) Start(pol *Policy, head []byte) {
	if s.pol != pol {
		s.index(pol)
	}
	s.events = isEventPacket(head)
	s.head = 0
	for i := range pol.Classes {
		if c := &pol.Classes[i]; !s.decides(c) && i < MaxClasses && c.Matches(head) {
			s.head |= 1 << i
		}
	}
	if s.events {
		s.ev.start(s.nameCap)
		return
	}
	for i := range s.vals {
		s.vals[i].set = false
	}
	s.state, s.esc, s.depth, s.skip = scanValue, false, 0, 0
	s.member, s.capt = 0, 0
}

// index finds pol's distinct paths and what a raw key or value can be.
func (s *ClassScan) index(pol *Policy) {
	s.pol = pol
	s.paths, s.pathOf = s.paths[:0], s.pathOf[:0]
	s.keyCap, s.valCap, s.nameCap = 0, 0, 0
	s.unknown = len(pol.Classes) > MaxClasses
	for i := range pol.Classes {
		c := &pol.Classes[i]
		s.nameCap = max(s.nameCap, rawCap(c.SocketIOEvent))
		if len(c.FieldPath) == 0 {
			s.pathOf = append(s.pathOf, -1)
			continue
		}
		if len(c.FieldPath) > MaxFieldDepth {
			s.unknown = true
		}
		k := -1
		for j, p := range s.paths {
			if slicesEqual(p, c.FieldPath) {
				k = j
			}
		}
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
	s.vals = make([]scanned, len(s.paths))
}

// rawCap is the longest a JSON string's raw bytes can be and still decode
// to s: six bytes (\u0041) for each byte of s.
func rawCap(s string) int { return 6 * len(s) }

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Write follows the message through b, the bytes after those written
// before.
func (s *ClassScan) Write(b []byte) {
	if s.events {
		s.ev.write(b)
		return
	}
	for i := 0; i < len(b); {
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
			if s.capt != 0 {
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
		if s.capt != 0 {
			s.keep(&s.val, &s.valLen, s.valCap, b[i:i+1])
		}
	case scanLiteral:
		if isJSONSpace(c) || c == ',' || c == '}' || c == ']' {
			s.valueEnded(false)
			return i // the delimiter is the next state's
		}
		if s.capt != 0 {
			s.keep(&s.val, &s.valLen, s.valCap, b[i:i+1])
		}
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
		switch c {
		case '"':
			s.state = scanSkipStr
		case '{', '[':
			s.skip++
		case '}', ']':
			if s.skip--; s.skip == 0 {
				s.state = scanAfter
				if s.depth == 0 {
					s.state = scanBroken // a top-level array
				}
			}
		}
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
	case scanDone:
		if !isJSONSpace(c) {
			s.state = scanBroken // bytes after the object: not JSON
		}
	case scanBroken:
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
	var next uint64
	if s.depth == 0 {
		next = 1<<len(s.paths) - 1
	} else {
		for m := s.member; m != 0; m &= m - 1 {
			if p := trailing(m); len(s.paths[p]) > s.depth {
				next |= 1 << p
			}
		}
	}
	if next == 0 || s.depth == MaxFieldDepth {
		s.state, s.skip = scanSkip, 1
		return
	}
	s.depth++
	s.onPath[s.depth] = next
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

// keyEnded finds the paths the key just read names at this depth. A new
// member of a path's name replaces the old one for the app: what the path
// had found through the old one is forgotten.
func (s *ClassScan) keyEnded() {
	s.state = scanColon
	s.member = 0
	if s.keyLen > s.keyCap {
		return
	}
	for m := s.onPath[s.depth]; m != 0; m &= m - 1 {
		p := trailing(m)
		if decodedEquals(s.key, s.paths[p][s.depth-1]) {
			s.member |= 1 << p
			s.vals[p].set = false
		}
	}
}

// startValue begins a string or literal member value, captured for the
// paths it ends.
func (s *ClassScan) startValue(st scanState) {
	s.state = st
	s.capt = 0
	for m := s.member; m != 0; m &= m - 1 {
		if p := trailing(m); len(s.paths[p]) == s.depth {
			s.capt |= 1 << p
		}
	}
	s.val, s.valLen = s.val[:0], 0
}

// valueEnded records a captured value for the paths it ends.
func (s *ClassScan) valueEnded(str bool) {
	s.state = scanAfter
	if s.depth == 0 {
		s.state = scanBroken
	}
	if s.capt == 0 || s.valLen > s.valCap {
		return
	}
	for m := s.capt; m != 0; m &= m - 1 {
		v := &s.vals[trailing(m)]
		v.set, v.str, v.raw = true, str, append(v.raw[:0], s.val...)
	}
	s.capt = 0
}

// Class returns the class the app sees in the whole message: the first of
// pol's classes whose path's last member has the class's value, or whose
// event the packet is, or that the first bytes matched. ok is false when
// the bytes of an object were not one JSON object: the class is then the
// first bytes'.
func (s *ClassScan) Class() (class int, ok bool) {
	if !s.events && s.state != scanDone || s.unknown {
		return 0, false
	}
	for i := range s.pol.Classes {
		c := &s.pol.Classes[i]
		var match bool
		switch {
		case !s.decides(c):
			match = s.head>>i&1 == 1
		case s.events:
			match = s.ev.named(c.SocketIOEvent)
		default:
			v := &s.vals[s.pathOf[i]]
			match = v.set && (v.str && decodedEquals(v.raw, c.FieldEquals) || !v.str && string(v.raw) == c.FieldEquals)
		}
		if match {
			return i, true
		}
	}
	return -1, true
}

func trailing(m uint64) int { return bits.TrailingZeros64(m) }
