package auth

import "strings"

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
