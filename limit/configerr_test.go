package limit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRedisConfigErrors: a wrong password, a missing one and a database index Redis lacks are configuration errors that waiting
// will not fix: the start says so at error level, naming the problem
// (never the password), where it used to say "unreachable" like an outage.
// The gate limits per replica meanwhile.
func TestRedisConfigErrors(t *testing.T) {
	withPass := startRedis(t, "--requirepass", "right-pass")
	open := startRedis(t)
	for _, tc := range []struct {
		name, url, want string
	}{
		{"wrong password", "redis://:wrong-pass@" + withPass.addr(), "wrong password"},
		{"no password", "redis://" + withPass.addr(), "needs a password"},
		{"database index", "redis://" + open.addr() + "/99", "no such database index"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log syncBuffer
			l := newLimiter(t, Config{RedisURL: tc.url, Timeout: testTimeout, KeyPrefix: keyPrefix(t),
				Logger: slog.New(slog.NewTextHandler(&log, nil)), Rules: Rules{UserMessages: rate(5, 10*time.Second, 0)}})
			out := log.String()
			if !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "redis configuration error") || !strings.Contains(out, tc.want) {
				t.Errorf("the start logged:\n%s\nwant an error naming %q", out, tc.want)
			}
			if strings.Contains(out, "wrong-pass") || strings.Contains(out, "right-pass") {
				t.Errorf("the log holds the password:\n%s", out)
			}
			if d := l.Message(context.Background(), "u", "a"); !d.Allowed || !d.Fallback {
				t.Errorf("decision: %+v, want the failure mode's", d)
			}
		})
	}
	// With the right password it works.
	l := newLimiter(t, Config{RedisURL: "redis://:right-pass@" + withPass.addr(), Timeout: testTimeout, KeyPrefix: keyPrefix(t),
		Rules: Rules{UserMessages: rate(5, 10*time.Second, 0)}})
	if d := l.Message(context.Background(), "u", "a"); !d.Allowed || d.Fallback {
		t.Errorf("right password: %+v", d)
	}
}

func TestRedisConfigProblem(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("dial: %w", &net.DNSError{Err: "no such host", Name: "redis-mastr", IsNotFound: true}), "unknown host redis-mastr"},
		{&net.DNSError{Err: "i/o timeout", Name: "redis", IsTimeout: true}, ""},
		{errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), ""},
		{errors.New("WRONGPASS invalid username-password pair or user is disabled."), "wrong password or user"},
	} {
		if got := redisConfigProblem(tc.err); got != tc.want {
			t.Errorf("redisConfigProblem(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
