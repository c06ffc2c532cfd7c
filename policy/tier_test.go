package policy

import "testing"

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
