package policy

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
)

// Holds reports whether the claims meet the condition.
func (c *Condition) Holds(claims map[string]any) bool {
	v, ok := Claim(claims, c.Claim)
	if !ok {
		return false
	}
	switch {
	case c.Exists:
		return true
	case c.Equals != nil:
		s, ok := scalar(v)
		return ok && s == *c.Equals
	case c.In != nil:
		s, ok := scalar(v)
		return ok && slices.Contains(c.In, s)
	case c.Contains != nil:
		return contains(v, *c.Contains)
	}
	return false
}

// Claim returns the claim at path (a name, or keys into nested objects) of
// a token's claims; ok is false when it is absent or null. A claim whose
// name holds the dots itself (a namespaced claim such as
// "https://example.com/plan") is found first.
func Claim(claims map[string]any, path []string) (any, bool) {
	if len(path) > 1 {
		if v, ok := claims[strings.Join(path, ".")]; ok {
			return v, v != nil
		}
	}
	var v any = claims
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = m[k]; !ok {
			return nil, false
		}
	}
	return v, v != nil
}

// ClaimString returns a claim's value as a key: a string as it is, a number
// or boolean as its JSON text; ok is false for an absent claim, an object
// or an array.
func ClaimString(claims map[string]any, path []string) (string, bool) {
	v, ok := Claim(claims, path)
	if !ok {
		return "", false
	}
	return scalar(v)
}

// scalar is a claim value as the text a condition compares: a string as it
// is, a number or boolean as its JSON text (an integer exactly, whatever its
// size; another number in its shortest form: 2.0 is "2"), and a list of one
// value as that value: a token's single audience comes as a list (RFC 7519
// lets aud be either).
func scalar(v any) (string, bool) {
	switch x := v.(type) {
	case []string:
		if len(x) == 1 {
			return x[0], true
		}
	case []any:
		if len(x) == 1 {
			return scalar(x[0])
		}
	case string:
		return x, true
	case bool:
		return strconv.FormatBool(x), true
	case json.Number:
		return numberText(string(x)), true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case int64:
		return strconv.FormatInt(x, 10), true
	case int:
		return strconv.Itoa(x), true
	}
	return "", false
}

// contains reports whether claim v holds want: an array with an element
// equal to it, or a string of space-separated values (OAuth's "scope") with
// one equal to it.
func contains(v any, want string) bool {
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			if s, ok := scalar(e); ok && s == want {
				return true
			}
		}
	case []string:
		return slices.Contains(x, want)
	case string:
		return slices.Contains(strings.Fields(x), want)
	}
	return false
}

// splitPath splits a claim path "realm_access.roles" into its keys.
func splitPath(s string) []string { return strings.Split(s, ".") }

// numberText is the text of the JSON number s that conditions and keys
// compare: an integer literal as it is (JSON allows no leading zeros, so
// its text is already the shortest), any other number as its float64 in the
// shortest form ("2.0" and "2e0" are "2").
func numberText(s string) string {
	digits := strings.TrimPrefix(s, "-")
	if digits != "" && strings.Trim(digits, "0123456789") == "" {
		if digits == "0" {
			return "0"
		}
		return s
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return s
	}
	return strconv.FormatFloat(f, 'f', -1, 64)
}
