// Package redact makes a URL safe to print: in a log line, an error, a
// startup summary. Configured URLs carry credentials (a Redis password, a
// JWKS server's user and password, an API key in the query string), and a
// URL that fails to parse is still printed by whoever reports the failure.
package redact

import (
	"net/url"
	"strings"
)

// Mask replaces every redacted part.
const Mask = "xxxxx"

// keptParams are query parameters whose values are never credentials and
// are needed to tell what a Redis URL points at.
var keptParams = map[string]bool{"addr": true, "master_set": true, "db": true}

// URL returns raw with its password and the value of every query parameter
// (but addr, master_set and db, which name Redis nodes) replaced by Mask,
// and its fragment dropped. A URL that does not parse is scrubbed the same
// way as text: whatever stands between "://" (or the start) and the last
// "@" of the authority keeps only the part before its first ':'.
func URL(raw string) string {
	if u, err := url.Parse(raw); err == nil && (u.Scheme != "" || u.Host != "") && u.Opaque == "" {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), Mask)
		}
		u.RawQuery = query(u.RawQuery)
		u.Fragment, u.RawFragment = "", ""
		return u.String()
	}
	return scrub(raw)
}

// scrub is URL for text that does not parse as a URL.
func scrub(raw string) string {
	prefix, rest := "", raw
	if i := strings.Index(raw, "://"); i >= 0 {
		prefix, rest = raw[:i+3], raw[i+3:]
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	if at := strings.LastIndexByte(authority, '@'); at >= 0 {
		user := authority[:at]
		if c := strings.IndexByte(user, ':'); c >= 0 {
			user = user[:c+1] + Mask
		}
		authority = user + authority[at:]
	}
	if f := strings.IndexByte(tail, '#'); f >= 0 {
		tail = tail[:f]
	}
	if q := strings.IndexByte(tail, '?'); q >= 0 {
		tail = tail[:q+1] + query(tail[q+1:])
	}
	return prefix + authority + tail
}

// query masks the values of a raw query string but those of keptParams,
// keeping its order and its keys as they were written.
func query(raw string) string {
	if raw == "" {
		return ""
	}
	parts := strings.Split(raw, "&")
	for i, p := range parts {
		key, _, hasValue := strings.Cut(p, "=")
		name, err := url.QueryUnescape(key)
		if err != nil {
			name = key
		}
		if hasValue && !keptParams[name] {
			parts[i] = key + "=" + Mask
		}
	}
	return strings.Join(parts, "&")
}
