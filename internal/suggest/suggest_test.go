package suggest

import "testing"

func TestClosest(t *testing.T) {
	words := []string{"limits", "block", "WSGATE_JWT_HMAC_SECRET_FILE", "class"}
	for _, tc := range []struct{ in, want string }{
		{"limts", "limits"},
		{"blok", "block"},
		{"WSGATE_JWT_HMAC_SECRET", "WSGATE_JWT_HMAC_SECRET_FILE"},
		{"clas", "class"},
		{"nothing-like-it", ""},
		{"", ""},
	} {
		if got := Closest(tc.in, words); got != tc.want {
			t.Errorf("Closest(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
