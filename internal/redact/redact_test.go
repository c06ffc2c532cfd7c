package redact

import (
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"http://127.0.0.1:3000", "http://127.0.0.1:3000"},
		{"redis://:s3cret@redis:6379/0", "redis://:xxxxx@redis:6379/0"},
		{"redis://default:s3cret@redis:6379/0", "redis://default:xxxxx@redis:6379/0"},
		{"rediss://user@redis:6379", "rediss://user@redis:6379"},
		{"redis://:s3cret@a:6379?addr=b:6379&addr=c:6379", "redis://:xxxxx@a:6379?addr=b:6379&addr=c:6379"},
		{"redis://:s3cret@a:6379?master_set=m&password=s3cret", "redis://:xxxxx@a:6379?master_set=m&password=xxxxx"},
		{"https://issuer/jwks?api_key=s3cret&sig=s3cret", "https://issuer/jwks?api_key=xxxxx&sig=xxxxx"},
		{"https://u:s3cret@issuer/jwks#s3cret", "https://u:xxxxx@issuer/jwks"},
		{"https://issuer/jwks?flag", "https://issuer/jwks?flag"},
		// What url.Parse refuses is scrubbed as text.
		{"http://u:s3cret@x:port/p?key=s3cret", "http://u:xxxxx@x:port/p?key=xxxxx"},
		{"redis://:s3cret@host:port/0", "redis://:xxxxx@host:port/0"},
		{"u:s3cret@host:6379", "u:xxxxx@host:6379"},
		{"host:6379", "host:6379"},
		{"ftp://u:s3cret@x/?k=s3cret", "ftp://u:xxxxx@x/?k=xxxxx"},
		{"", ""},
	} {
		got := URL(tc.in)
		if got != tc.want {
			t.Errorf("URL(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if strings.Contains(got, "s3cret") {
			t.Errorf("URL(%q) = %q keeps the secret", tc.in, got)
		}
	}
}
