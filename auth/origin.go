package auth

import (
	"fmt"
	"net/url"
	"strings"
)

// OriginAllowed reports whether a browser Origin may open a connection.
// Patterns are exact origins ("https://app.example.com"), one-label-or-more
// wildcards ("https://*.example.com", which does not match the apex
// "https://example.com") or "*". Empty patterns allow any origin, and a
// request without Origin is allowed: only browsers send it, and the check
// exists to stop cross-site browser pages (RFC 6455 section 10.2).
// Comparison is case-insensitive.
func OriginAllowed(patterns []string, origin string) bool {
	if len(patterns) == 0 || origin == "" {
		return true
	}
	for _, p := range patterns {
		if p == "*" || strings.EqualFold(p, origin) {
			return true
		}
		pre, suf, ok := strings.Cut(p, "*.")
		if !ok || strings.Contains(suf, "*") {
			continue
		}
		suf = "." + suf
		if len(origin) <= len(pre)+len(suf) ||
			!strings.EqualFold(origin[:len(pre)], pre) ||
			!strings.EqualFold(origin[len(origin)-len(suf):], suf) {
			continue
		}
		if hostLabels(origin[len(pre) : len(origin)-len(suf)]) {
			return true
		}
	}
	return false
}

// hostLabels reports whether s is made of DNS labels only, so a wildcard
// cannot swallow a port, path, userinfo or another host.
func hostLabels(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i] | 0x20
		if !(c >= 'a' && c <= 'z' || s[i] >= '0' && s[i] <= '9' || s[i] == '-' || s[i] == '.') {
			return false
		}
	}
	return !strings.Contains(s, "..")
}

// CheckOriginPattern says why p can never match a browser's Origin, which
// is a scheme, a host and maybe a port, nothing else: a pattern without a
// scheme, with a path (a trailing slash too), a query or user info, or a
// wildcard anywhere but at the start of the host. "*" matches every
// origin, and "null" the opaque one.
func CheckOriginPattern(p string) error {
	if p == "*" || p == "null" {
		// "null" is what browsers send from sandboxed frames and file://
		// pages: it matches, if weakly.
		return nil
	}
	u, err := url.Parse(strings.Replace(p, "*.", "wildcard.", 1))
	switch {
	case err != nil:
		return fmt.Errorf("origin %q: %w", p, err)
	case u.Scheme == "" || u.Host == "" || u.Opaque != "":
		return fmt.Errorf("origin %q: want scheme://host[:port], e.g. https://app.example.com", p)
	case u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return fmt.Errorf("origin %q: an Origin has no path, query or user info (no trailing slash either)", p)
	case strings.Contains(p, "*") && !strings.HasPrefix(p, u.Scheme+"://*."):
		return fmt.Errorf("origin %q: a wildcard only as the first label, e.g. https://*.example.com", p)
	case strings.Count(p, "*") > 1:
		return fmt.Errorf("origin %q: one wildcard at most", p)
	}
	return nil
}
