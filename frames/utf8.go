package frames

import "encoding/binary"

// utf8State validates UTF-8 across chunk and frame boundaries (RFC 6455
// section 8.1: a text message is valid UTF-8 as a whole, and an endpoint
// fails the connection as soon as it knows the bytes cannot become valid).
// It follows the well-formed byte sequences of RFC 3629 section 4, so
// surrogates, overlong forms and code points above U+10FFFF fail at the
// first byte that rules them out.
type utf8State struct {
	need   uint8 // continuation bytes still expected
	lo, hi uint8 // bounds of the next continuation byte
}

// valid consumes p and reports whether everything seen so far can still be
// the beginning of valid UTF-8.
func (s *utf8State) valid(p []byte) bool {
	i := 0
	for i < len(p) {
		if s.need == 0 {
			for i+8 <= len(p) && binary.LittleEndian.Uint64(p[i:])&0x8080808080808080 == 0 {
				i += 8
			}
			if i == len(p) {
				break
			}
			c := p[i]
			i++
			switch {
			case c < 0x80:
			case c < 0xC2:
				return false
			case c < 0xE0:
				s.need, s.lo, s.hi = 1, 0x80, 0xBF
			case c == 0xE0:
				s.need, s.lo, s.hi = 2, 0xA0, 0xBF
			case c == 0xED:
				s.need, s.lo, s.hi = 2, 0x80, 0x9F
			case c < 0xF0:
				s.need, s.lo, s.hi = 2, 0x80, 0xBF
			case c == 0xF0:
				s.need, s.lo, s.hi = 3, 0x90, 0xBF
			case c < 0xF4:
				s.need, s.lo, s.hi = 3, 0x80, 0xBF
			case c == 0xF4:
				s.need, s.lo, s.hi = 3, 0x80, 0x8F
			default:
				return false
			}
			continue
		}
		c := p[i]
		i++
		if c < s.lo || c > s.hi {
			return false
		}
		s.need--
		s.lo, s.hi = 0x80, 0xBF
	}
	return true
}

// complete reports whether the bytes seen end on a code point boundary.
func (s *utf8State) complete() bool { return s.need == 0 }

// UTF8 checks a stream of bytes as UTF-8, chunk by chunk, failing at the
// first byte that cannot be part of valid UTF-8. The zero value is ready.
type UTF8 struct{ s utf8State }

// Valid consumes p and reports whether everything seen so far can still be
// the beginning of valid UTF-8.
func (u *UTF8) Valid(p []byte) bool { return u.s.valid(p) }

// Complete reports whether the bytes seen end on a code point boundary.
func (u *UTF8) Complete() bool { return u.s.complete() }
