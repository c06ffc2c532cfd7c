package auth

import "testing"

func TestOriginAllowed(t *testing.T) {
	tests := []struct {
		patterns []string
		origin   string
		want     bool
	}{
		{nil, "https://evil.test", true},
		{[]string{"https://app.example.com"}, "", true},
		{[]string{"https://app.example.com"}, "https://app.example.com", true},
		{[]string{"https://app.example.com"}, "HTTPS://APP.example.com", true},
		{[]string{"https://app.example.com"}, "http://app.example.com", false},
		{[]string{"https://app.example.com"}, "https://app.example.com:8443", false},
		{[]string{"https://*.example.com"}, "https://a.example.com", true},
		{[]string{"https://*.example.com"}, "https://a.b.example.com", true},
		{[]string{"https://*.example.com"}, "https://example.com", false},
		{[]string{"https://*.example.com"}, "https://evil.test/.example.com", false},
		{[]string{"https://*.example.com"}, "https://evil.test:1@x.example.com", false},
		{[]string{"https://*.example.com"}, "https://evilexample.com", false},
		{[]string{"https://*.example.com"}, "http://a.example.com", false},
		{[]string{"https://*.example.com:8443"}, "https://a.example.com:8443", true},
		{[]string{"https://*.example.com"}, "https://a.example.com:8443", false},
		{[]string{"*"}, "null", true},
		{[]string{"https://a.test", "https://b.test"}, "https://b.test", true},
	}
	for _, tc := range tests {
		if got := OriginAllowed(tc.patterns, tc.origin); got != tc.want {
			t.Errorf("OriginAllowed(%q, %q) = %v, want %v", tc.patterns, tc.origin, got, tc.want)
		}
	}
}

// TestCheckOriginPattern: patterns that can never match a browser's
// Origin are refused at start, not met by every browser as a 403.
func TestCheckOriginPattern(t *testing.T) {
	for _, p := range []string{"*", "null", "https://app.example.com", "http://localhost:8080", "https://*.example.com"} {
		if err := CheckOriginPattern(p); err != nil {
			t.Errorf("%q refused: %v", p, err)
		}
	}
	for _, p := range []string{"app.example.com", "https://app.example.com/", "https://app.example.com/x",
		"https://a.*.example.com", "https://*.*.example.com", "https://u@app.example.com", "https://app.example.com?x", "*.example.com"} {
		if err := CheckOriginPattern(p); err == nil {
			t.Errorf("%q accepted", p)
		}
	}
}
