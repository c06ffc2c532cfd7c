package policy

import (
	"encoding/json"
	"testing"
)

// TestClaimShapes: claims as a verifier hands them over: a single audience
// as a list of one, a namespaced claim whose name holds dots, nested
// claims, numbers.
func TestClaimShapes(t *testing.T) {
	claims := map[string]any{
		"aud":                      []string{"myapp"},
		"groups":                   []any{"admins"},
		"roles":                    []any{"a", "b"},
		"https://example.com/plan": "pro",
		"realm_access":             map[string]any{"roles": []any{"x"}},
		"n":                        2.0,
	}
	eq := func(s string) *string { return &s }
	for _, tc := range []struct {
		c    Condition
		want bool
	}{
		{Condition{Claim: []string{"aud"}, Equals: eq("myapp")}, true},
		{Condition{Claim: []string{"aud"}, In: []string{"other", "myapp"}}, true},
		{Condition{Claim: []string{"groups"}, Equals: eq("admins")}, true},
		{Condition{Claim: []string{"roles"}, Equals: eq("a")}, false},
		{Condition{Claim: []string{"roles"}, Contains: eq("b")}, true},
		{Condition{Claim: splitPath("https://example.com/plan"), Equals: eq("pro")}, true},
		{Condition{Claim: splitPath("realm_access.roles"), Contains: eq("x")}, true},
		{Condition{Claim: []string{"n"}, Equals: eq("2")}, true},
	} {
		if got := tc.c.Holds(claims); got != tc.want {
			t.Errorf("%+v: %v, want %v", tc.c, got, tc.want)
		}
	}
	if k, ok := ClaimString(claims, []string{"aud"}); !ok || k != "myapp" {
		t.Errorf("key claim:aud = %q, %v; want myapp", k, ok)
	}
}

// TestClaimNumbers: numbers as a verifier hands them over (json.Number, the
// token's text) compare as their JSON text: integers exactly whatever
// their size, other numbers in their shortest form, as float64 claims did.
func TestClaimNumbers(t *testing.T) {
	for in, want := range map[string]string{
		"9007199254740993":      "9007199254740993",
		"9007199254740992":      "9007199254740992",
		"-18446744073709551617": "-18446744073709551617",
		"0":                     "0",
		"-0":                    "0",
		"2.0":                   "2",
		"2e0":                   "2",
		"1E3":                   "1000",
		"0.5":                   "0.5",
		"-1.25e-1":              "-0.125",
	} {
		claims := map[string]any{"uid": json.Number(in)}
		if got, ok := ClaimString(claims, []string{"uid"}); !ok || got != want {
			t.Errorf("claim %s: key %q, %v; want %q", in, got, ok, want)
		}
		eq := want
		if !(&Condition{Claim: []string{"uid"}, Equals: &eq}).Holds(claims) {
			t.Errorf("claim %s does not equal %q", in, want)
		}
	}
}
