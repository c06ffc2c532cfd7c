package policy

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"unicode/utf16"
	"unicode/utf8"
)

// Classifying a text message from its first bytes: the gate sees a prefix
// of each message (it never buffers one whole), so every answer here is
// given only once the bytes that decide it are in the prefix, and more bytes
// cannot change it. Nothing allocates: values are returned as subslices of
// the prefix and compared with their escapes decoded one at a time.

// maxSkipDepth bounds the nesting of the arrays and objects JSONField skips,
// so that a hostile "[[[[..." costs a bounded walk; the kinds of the open
// containers fit in the bits of a uint64.
const maxSkipDepth = 64

// SocketIOEvent returns the event name of a socket.io EVENT or BINARY_EVENT
// packet carried in an engine.io message packet, from the first bytes of the
// text frame's payload. Such a packet is, without the spaces,
//
//	4 2 [/namespace,] [ack id] ["name", ...]
//	4 5 attachments - [/namespace,] [ack id] ["name", ...]
//
// as engine.io 4 and socket.io 5 write it; JSON whitespace may follow the
// '[' and the name. name is the raw bytes between the quotes of the array's
// first element (escapes not decoded) and aliases prefix. ok is false for
// any other packet, for a first element that is not a string, and when
// prefix ends before the name and the ',' or ']' after it.
func SocketIOEvent(prefix []byte) (name []byte, ok bool) {
	b := prefix
	if len(b) < 2 || b[0] != '4' {
		return nil, false
	}
	i := 2
	switch b[1] {
	case '2':
	case '5':
		// The count of attachments, which follow as binary frames, up to
		// the '-': socket.io-parser reads it with JavaScript's Number(),
		// which takes 1, " 1", 1e0, 0x1 or 1.0 alike, so any count is
		// taken (one it refuses only makes the packet fail in the app).
		j := bytes.IndexByte(b[i:], '-')
		if j <= 0 {
			return nil, false
		}
		i += j + 1
	default:
		return nil, false
	}
	if i < len(b) && b[i] == '/' {
		// socket.io's decoder takes all up to the first comma as the
		// namespace, so the name is only known once the comma is.
		j := bytes.IndexByte(b[i:], ',')
		if j < 0 {
			return nil, false
		}
		i += j + 1
	}
	i = skipAckID(b, i)
	if i >= len(b) || b[i] != '[' {
		return nil, false
	}
	i = skipJSONSpace(b, i+1)
	if i >= len(b) || b[i] != '"' {
		return nil, false
	}
	end, ok := scanJSONString(b, i)
	if !ok || !jsonDelimited(b, end, ']') {
		return nil, false
	}
	return b[i+1 : end-1 : end-1], true
}

// EventEquals reports whether SocketIOEvent(prefix) is want, the name's JSON
// escapes decoded.
func EventEquals(prefix []byte, want string) bool {
	name, ok := SocketIOEvent(prefix)
	return ok && decodedEquals(name, want)
}

// JSONField returns the value of the member at path (keys into nested
// objects, outermost first) of the JSON object that starts prefix, after
// optional JSON whitespace. It walks the members in order, skipping the
// values of others without decoding them; keys compare with their escapes
// decoded, and the last of duplicate keys wins, as in the parsers the apps
// behind the gate use (JavaScript's JSON.parse, Go's, Python's). value
// aliases prefix: for a string, the raw bytes between the quotes (escapes
// not decoded) with str true; for a number, true, false or null, its
// literal text. ok is false when the value is an object or array, when the
// member is not there, when prefix ends before the value and the ',' or '}'
// after it, when the JSON is malformed up to there, and when a skipped
// value nests more than 64 deep.
func JSONField(prefix []byte, path []string) (value []byte, str bool, ok bool) {
	value, str, ok, _ = jsonField(prefix, path)
	return value, str, ok
}

// jsonField is JSONField, and whole reports whether every object on the
// path ends within prefix: only then can no later member of the same name
// replace the value found.
func jsonField(prefix []byte, path []string) (value []byte, str, ok, whole bool) {
	if len(path) == 0 {
		return nil, false, false, false
	}
	i := skipJSONSpace(prefix, 0)
	whole = true
	for _, key := range path {
		// prefix[i] opens the object that holds key: the outermost, then the
		// value of the previous key.
		if i >= len(prefix) || prefix[i] != '{' {
			return nil, false, false, false
		}
		var closed bool
		if i, closed, ok = findJSONMember(prefix, i+1, key); !ok {
			return nil, false, false, false
		}
		whole = whole && closed
	}
	value, str, ok = jsonScalar(prefix, i)
	return value, str, ok, whole && ok
}

// FieldEquals reports whether JSONField(prefix, path) found a value equal to
// want: a string's value with its JSON escapes (\" \\ \/ \n \u00e9 and
// surrogate pairs) decoded, or the literal text of a number, true, false or
// null. A number compares as written (17.0 does not equal "17"), and the
// string "17" equals "17" as the number 17 does.
func FieldEquals(prefix []byte, path []string, want string) bool {
	eq, _ := fieldEquals(prefix, path, want)
	return eq
}

// fieldEquals is FieldEquals, and whole is jsonField's.
func fieldEquals(prefix []byte, path []string, want string) (eq, whole bool) {
	value, str, ok, whole := jsonField(prefix, path)
	switch {
	case !ok:
		return false, false
	case str:
		return decodedEquals(value, want), whole
	}
	return string(value) == want, whole
}

// findJSONMember returns the index of the value of the last member named key
// of the object whose members start at b[i], just after its '{', and
// whether the object's '}' is in b (closed): when it is not, a later member
// of that name could still replace the one found. ok is false when no
// member so named is in b, and when b is not JSON up to there.
func findJSONMember(b []byte, i int, key string) (v int, closed, ok bool) {
	i = skipJSONSpace(b, i)
	for {
		start, end, vi, isKey := scanJSONKey(b, i)
		if !isKey {
			// b ends, or the '}' of an empty object, or not JSON.
			return v, false, ok
		}
		if decodedEquals(b[start:end], key) {
			v, ok = vi, true
		}
		next, skipped := skipJSONValue(b, vi)
		if !skipped {
			return v, false, ok
		}
		i = skipJSONSpace(b, next)
		switch {
		case i >= len(b):
			return v, false, ok
		case b[i] == '}':
			return v, true, ok
		case b[i] != ',':
			return 0, false, false // not JSON
		}
		i = skipJSONSpace(b, i+1)
	}
}

// jsonScalar returns the string, number, true, false or null at b[i] as
// JSONField does. It insists on the ',' or '}' after it: without that a
// number could go on in the bytes after the prefix, and what is not JSON
// after a value would have been missed.
func jsonScalar(b []byte, i int) (value []byte, str bool, ok bool) {
	end, ok := scanJSONScalar(b, i)
	if !ok || !jsonDelimited(b, end, '}') {
		return nil, false, false
	}
	if b[i] == '"' {
		return b[i+1 : end-1 : end-1], true, true
	}
	return b[i:end:end], false, true
}

// jsonDelimited reports whether the first byte at or after b[i] that is not
// JSON whitespace is a ',' or close: whether a value that ended at b[i] is
// followed by what may follow it in an array (close ']') or object ('}').
func jsonDelimited(b []byte, i int, close byte) bool {
	i = skipJSONSpace(b, i)
	return i < len(b) && (b[i] == ',' || b[i] == close)
}

// scanJSONKey reads the member key at b[i] (a string), the ':' and the
// whitespace after it. It returns the raw key as b[start:end] and the index
// of the value.
func scanJSONKey(b []byte, i int) (start, end, value int, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return 0, 0, 0, false
	}
	j, ok := scanJSONString(b, i)
	if !ok {
		return 0, 0, 0, false
	}
	k := skipJSONSpace(b, j)
	if k >= len(b) || b[k] != ':' {
		return 0, 0, 0, false
	}
	return i + 1, j - 1, skipJSONSpace(b, k+1), true
}

// jsonStack records the kinds of the arrays and objects open around the
// point skipJSONValue has reached, one bit each.
type jsonStack struct {
	objects uint64 // bit d is set when the container at depth d is an object
	depth   int
}

// push opens an object or array; it reports false past maxSkipDepth.
func (s *jsonStack) push(object bool) bool {
	if s.depth == maxSkipDepth {
		return false
	}
	s.objects &^= 1 << s.depth
	if object {
		s.objects |= 1 << s.depth
	}
	s.depth++
	return true
}

// closer is the byte that closes the innermost open container.
func (s *jsonStack) closer() byte {
	if s.objects>>(s.depth-1)&1 == 1 {
		return '}'
	}
	return ']'
}

// element returns the index of the value of the innermost container's next
// element, which starts at b[i]: past its key and ':' in an object.
func (s *jsonStack) element(b []byte, i int) (int, bool) {
	if s.closer() == ']' {
		return i, true
	}
	_, _, v, ok := scanJSONKey(b, i)
	return v, ok
}

// skipJSONValue returns the index just past the JSON value that starts at
// b[i], checking its syntax as it goes. It walks nested arrays and objects
// with a loop and a bit stack rather than recursion, so a deep value costs
// no stack, and gives up past maxSkipDepth.
func skipJSONValue(b []byte, i int) (int, bool) {
	var s jsonStack
	ok := true
	for {
		// b[i] starts a value.
		if i < len(b) && (b[i] == '{' || b[i] == '[') {
			if !s.push(b[i] == '{') {
				return 0, false
			}
			i = skipJSONSpace(b, i+1)
			if i >= len(b) || b[i] != s.closer() {
				if i, ok = s.element(b, i); !ok {
					return 0, false
				}
				continue
			}
			// An empty container: a value that has ended.
			s.depth--
			i++
		} else if i, ok = scanJSONScalar(b, i); !ok {
			return 0, false
		}
		// A value ended at b[i]: close the containers that end with it, up
		// to the next element.
		for {
			if s.depth == 0 {
				return i, true
			}
			i = skipJSONSpace(b, i)
			if i >= len(b) {
				return 0, false
			}
			if b[i] == s.closer() {
				s.depth--
				i++
				continue
			}
			if b[i] != ',' {
				return 0, false
			}
			if i, ok = s.element(b, skipJSONSpace(b, i+1)); !ok {
				return 0, false
			}
			break
		}
	}
}

// scanJSONScalar returns the index just past the string, number, true,
// false or null that starts at b[i].
func scanJSONScalar(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch c := b[i]; {
	case c == '"':
		return scanJSONString(b, i)
	case c == '-' || '0' <= c && c <= '9':
		return scanJSONNumber(b, i)
	}
	return scanJSONLiteral(b, i)
}

// scanJSONString returns the index just past the closing quote of the
// string whose opening quote is b[i]. It checks escapes and refuses the raw
// control characters JSON forbids in strings.
func scanJSONString(b []byte, i int) (int, bool) {
	for i++; i < len(b); {
		i = skipPlain(b, i)
		if i >= len(b) {
			break
		}
		switch c := b[i]; {
		case c == '"':
			return i + 1, true
		case c == '\\':
			_, n := decodeJSONEscape(b[i:])
			if n == 0 {
				return 0, false
			}
			i += n
		case c < 0x20:
			return 0, false
		default:
			i++
		}
	}
	return 0, false
}

// skipPlain returns the index of the first quote, backslash or control
// character at or after b[i], or len(b). It tests eight bytes at a time, as
// most of a message is the plain text of its strings.
func skipPlain(b []byte, i int) int {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	for ; len(b)-i >= 8; i += 8 {
		x := binary.LittleEndian.Uint64(b[i:])
		// The high bit of each byte of x that is below 0x20, or that x^y
		// makes zero. Only bytes above the first such byte can be flagged
		// wrongly, so the lowest flag is exact.
		q, bs := x^('"'*ones), x^('\\'*ones)
		m := ((x-0x20*ones)&^x | (q-ones)&^q | (bs-ones)&^bs) & highs
		if m != 0 {
			return i + bits.TrailingZeros64(m)/8
		}
	}
	for i < len(b) && b[i] >= 0x20 && b[i] != '"' && b[i] != '\\' {
		i++
	}
	return i
}

// scanJSONNumber returns the index just past the number that starts at
// b[i]: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?. A number that runs
// to the end of b may go on after it; callers look for the byte after it.
func scanJSONNumber(b []byte, i int) (int, bool) {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		i = skipDecimal(b, i+1)
	default:
		return 0, false
	}
	if i < len(b) && b[i] == '.' {
		j := skipDecimal(b, i+1)
		if j == i+1 {
			return 0, false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := skipDecimal(b, i)
		if j == i {
			return 0, false
		}
		i = j
	}
	return i, true
}

// scanJSONLiteral returns the index just past the true, false or null that
// starts at b[i].
func scanJSONLiteral(b []byte, i int) (int, bool) {
	var lit string
	switch b[i] {
	case 't':
		lit = "true"
	case 'f':
		lit = "false"
	case 'n':
		lit = "null"
	default:
		return 0, false
	}
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return 0, false
	}
	return i + len(lit), true
}

// skipAckID returns the index of the first byte at or after b[i] that
// socket.io-parser does not take into a packet's ack id: it takes each
// character c for which JavaScript's Number(c) == c holds, a decimal digit
// or any JavaScript white space (which converts to 0), so that
// `42 ["chat"]` is the event chat with an ack id, and the name must be
// looked for after them.
func skipAckID(b []byte, i int) int {
	for i < len(b) {
		c := b[i]
		switch {
		case '0' <= c && c <= '9', c == ' ', '\t' <= c && c <= '\r':
			i++
			continue
		case c < utf8.RuneSelf:
			return i
		}
		r, n := utf8.DecodeRune(b[i:])
		if !jsSpace(r) {
			return i
		}
		i += n
	}
	return i
}

// jsSpace reports whether r, outside ASCII, is JavaScript white space or a
// line terminator: U+00A0, U+FEFF, U+2028, U+2029 and the space separators
// (Unicode's Zs).
func jsSpace(r rune) bool {
	switch r {
	case 0xa0, 0xfeff, 0x2028, 0x2029, 0x1680, 0x202f, 0x205f, 0x3000:
		return true
	}
	return 0x2000 <= r && r <= 0x200a
}

// skipDecimal returns the index of the first byte at or after b[i] that is
// not a decimal digit.
func skipDecimal(b []byte, i int) int {
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	return i
}

// skipJSONSpace returns the index of the first byte at or after b[i] that is
// not JSON whitespace.
func skipJSONSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}

// decodeJSONEscape decodes the escape that starts b, whose first byte is a
// backslash: the rune and the n bytes it takes, or n == 0 when it is not a
// JSON escape or b ends within it. A \u escape of a UTF-16 surrogate pair
// takes both halves; a lone surrogate is U+FFFD, as with encoding/json.
func decodeJSONEscape(b []byte) (r rune, n int) {
	if len(b) < 2 {
		return 0, 0
	}
	switch b[1] {
	case '"', '\\', '/':
		return rune(b[1]), 2
	case 'b':
		return '\b', 2
	case 'f':
		return '\f', 2
	case 'n':
		return '\n', 2
	case 'r':
		return '\r', 2
	case 't':
		return '\t', 2
	case 'u':
		r, ok := hex4(b[2:])
		switch {
		case !ok:
			return 0, 0
		case !utf16.IsSurrogate(r):
			return r, 6
		}
		if len(b) >= 12 && b[6] == '\\' && b[7] == 'u' {
			if r2, ok := hex4(b[8:]); ok {
				if p := utf16.DecodeRune(r, r2); p != utf8.RuneError {
					return p, 12
				}
			}
		}
		return utf8.RuneError, 6
	}
	return 0, 0
}

// hex4 decodes the four hex digits that start b.
func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// decodedEquals reports whether the JSON string body raw (the bytes between
// the quotes, escapes undecoded) decodes to want. It compares the runs
// between escapes as they are and encodes each escape's rune into a stack
// buffer, so it allocates nothing. Bytes that are not UTF-8 compare as they
// are, where encoding/json would read U+FFFD: a WebSocket text message must
// be UTF-8, and servers refuse one that is not.
func decodedEquals(raw []byte, want string) bool {
	for {
		j := bytes.IndexByte(raw, '\\')
		if j < 0 {
			return string(raw) == want
		}
		if len(want) < j || string(raw[:j]) != want[:j] {
			return false
		}
		r, n := decodeJSONEscape(raw[j:])
		if n == 0 {
			return false
		}
		var buf [utf8.UTFMax]byte
		w := utf8.EncodeRune(buf[:], r)
		want = want[j:]
		if len(want) < w || string(buf[:w]) != want[:w] {
			return false
		}
		raw, want = raw[j+n:], want[w:]
	}
}
