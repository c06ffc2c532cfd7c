package policy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// sizeUnits are the units a byte limit may carry, longest first so that
// "KiB" is not read as "B".
var sizeUnits = []struct {
	name string
	n    int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
	{"B", 1},
}

// ParseWindow parses a limit "N/duration": "100/10s", "60/1m", "5/s" (a bare
// unit counts one of it). A byte limit may carry a unit: "8MiB/10s",
// "500KB/1s". The window must be a whole number of milliseconds.
func ParseWindow(s string, bytes bool) (Window, error) {
	bad := func(reason string) (Window, error) {
		return Window{}, fmt.Errorf("limit %q: %s", s, reason)
	}
	n, per, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return bad(`want "N/duration", e.g. "100/10s"`)
	}
	n = strings.TrimSpace(n)
	mult := int64(1)
	if bytes {
		for _, u := range sizeUnits {
			if num, ok := strings.CutSuffix(n, u.name); ok {
				n, mult = strings.TrimSpace(num), u.n
				break
			}
		}
	}
	limit, err := strconv.ParseInt(n, 10, 64)
	switch {
	case err != nil && !bytes:
		return bad("the count must be a whole number")
	case err != nil:
		return bad("the size must be a whole number, optionally with B, KiB, MiB, GiB, KB, MB or GB")
	case limit < 1:
		return bad("the count must be at least 1")
	case limit > (1<<53)/mult:
		return bad("too large")
	}
	per = strings.TrimSpace(per)
	d := per
	if d != "" && (d[0] < '0' || d[0] > '9') && d[0] != '.' {
		d = "1" + d
	}
	w, err := time.ParseDuration(d)
	if err != nil {
		return bad(fmt.Sprintf("%q is not a duration", per))
	}
	if err := wholeMillis(w, false); err != nil {
		return bad("the window " + err.Error())
	}
	return Window{Limit: limit * mult, Per: w}, nil
}

// wholeMillis checks a duration Redis can keep: positive (or zero when
// allowed) whole milliseconds.
func wholeMillis(d time.Duration, zeroOK bool) error {
	switch {
	case d == 0 && zeroOK:
		return nil
	case d < time.Millisecond:
		return errors.New("must be at least 1ms")
	case d%time.Millisecond != 0:
		return errors.New("must be a whole number of milliseconds")
	}
	return nil
}

// formatWindow writes w as ParseWindow reads it, with a binary unit for a
// byte limit that is a whole number of one.
func formatWindow(w Window, bytes bool) string {
	n := strconv.FormatInt(w.Limit, 10)
	if bytes {
		for _, u := range sizeUnits[:3] {
			if w.Limit >= u.n && w.Limit%u.n == 0 {
				n = strconv.FormatInt(w.Limit/u.n, 10) + u.name
			}
		}
	}
	return n + "/" + shortDuration(w.Per)
}

// shortDuration is d without the zero units time.Duration.String adds
// ("1m" rather than "1m0s").
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// formatWindows writes a rule's limits: "5/1s, 60/1m".
func formatWindows(ws []Window, bytes bool) string {
	parts := make([]string, len(ws))
	for i, w := range ws {
		parts[i] = formatWindow(w, bytes)
	}
	return strings.Join(parts, ", ")
}
