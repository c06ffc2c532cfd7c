package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// holdingBackend answers /fast at once; /hold reports its arrival on the
// returned channel, reads the body and answers only once release is called
// (or the request ends). A test calls release in a cleanup registered after
// its gate's, so that the gate's close does not wait for a held request.
func holdingBackend(t *testing.T) (url string, arrived <-chan struct{}, release func()) {
	t.Helper()
	in := make(chan struct{}, 16)
	held := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(held) }) }
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			in <- struct{}{}
			if _, err := io.ReadAll(r.Body); err != nil {
				return
			}
			select {
			case <-held:
			case <-r.Context().Done():
				return
			}
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(s.Close)
	return s.URL, in, release
}

// TestPassBodyTimeout: a client that trickles a pass-through body holds
// neither a goroutine nor an upstream connection past PassBodyTimeout; it
// gets 408.
func TestPassBodyTimeout(t *testing.T) {
	up, _, release := holdingBackend(t)
	g := newGate(t, up, func(c *Config) { c.PassBodyTimeout = 100 * time.Millisecond })
	t.Cleanup(release)
	res := rawRequest(t, g, "POST /hold HTTP/1.1\r\nHost: gate.test\r\nContent-Length: 100\r\n\r\n0123456789")
	defer res.Body.Close()
	if res.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("status %d, want 408", res.StatusCode)
	}
}

// TestPassResponseTimeout: an upstream that does not answer a pass-through
// request within PassResponseTimeout costs the client a 504, not forever.
func TestPassResponseTimeout(t *testing.T) {
	up, _, release := holdingBackend(t)
	g := newGate(t, up, func(c *Config) { c.PassResponseTimeout = 100 * time.Millisecond })
	t.Cleanup(release)
	res := rawRequest(t, g, "GET /hold HTTP/1.1\r\nHost: gate.test\r\n\r\n")
	defer res.Body.Close()
	if res.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504", res.StatusCode)
	}
}

// TestMaxPassRequests: over MaxPassRequests pass-through requests in
// flight, the next one gets 503 without reaching the upstream; a finished
// request frees its slot.
func TestMaxPassRequests(t *testing.T) {
	up, arrived, release := holdingBackend(t)
	g := newGate(t, up, func(c *Config) { c.MaxPassRequests = 1 })
	t.Cleanup(release)
	hc := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)
	first := make(chan *http.Response, 1)
	go func() {
		res, err := hc.Get(g.URL + "/hold")
		if err != nil {
			t.Error(err)
		}
		first <- res
	}()
	<-arrived
	res := rawRequest(t, g, "GET /fast HTTP/1.1\r\nHost: gate.test\r\n\r\n")
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable || res.Header.Get("Retry-After") == "" {
		t.Fatalf("second request while the first is held: %d %q (Retry-After %q), want 503 with Retry-After",
			res.StatusCode, b, res.Header.Get("Retry-After"))
	}
	release()
	if res := <-first; res == nil || res.StatusCode != http.StatusOK {
		t.Fatalf("the held request: %v", res)
	} else {
		res.Body.Close()
	}
	res = rawRequest(t, g, "GET /fast HTTP/1.1\r\nHost: gate.test\r\n\r\n")
	b, _ = io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.Contains(string(b), "ok") {
		t.Fatalf("after the held request ended: %d %q, want 200", res.StatusCode, b)
	}
}
