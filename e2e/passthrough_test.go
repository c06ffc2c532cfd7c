//go:build e2e

package e2e

// Pass-through (non-WebSocket) requests through the built binary: the bounds of
// --pass-body-timeout, --pass-response-timeout and --max-pass-requests, and long polls, whose
// response the backend holds for longer than the body timeout, still answered.

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// holdBackend answers /hold?ms=N after reading the body and holding the response N ms (a long
// poll), and reports each arrival on the returned channel.
func holdBackend(t *testing.T) (url string, arrived <-chan struct{}) {
	t.Helper()
	in := make(chan struct{}, 64)
	srv := serveBackend(t, "hold backend", func(ctx context.Context, w http.ResponseWriter, r *http.Request) {
		in <- struct{}{}
		if _, err := io.ReadAll(r.Body); err != nil {
			return
		}
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-r.Context().Done():
			return
		case <-ctx.Done():
			return
		}
		io.WriteString(w, "held "+r.Method)
	})
	return srv.URL, in
}

func TestPassThroughBounds(t *testing.T) {
	t.Parallel()
	be, arrived := holdBackend(t)
	g := startGate(t, slices.Concat([]string{"--upstream", be, "--user-rate", "0", "--ip-rate", "0",
		"--pass-body-timeout", "300ms", "--pass-response-timeout", "2s", "--max-pass-requests", "2"}, noConnRules)...)
	hostport := strings.TrimPrefix(g.HTTP, "http://")
	request := func(method, path, body string) (int, string) {
		t.Helper()
		req := method + " " + path + " HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n"
		if body != "" {
			req += "Content-Length: " + strconv.Itoa(len(body)) + "\r\n"
		}
		status, got, err := atkRawRequest(t, hostport, []byte(req+"\r\n"+body))
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return status, got
	}

	t.Run("long polls outlive the body timeout", func(t *testing.T) {
		for _, tc := range []struct{ method, body string }{{"GET", ""}, {"POST", "2:40"}} {
			start := time.Now()
			status, body := request(tc.method, "/hold?ms=1000", tc.body)
			if status != http.StatusOK || body != "held "+tc.method {
				t.Errorf("%s long poll held 1s: %d %q, want 200", tc.method, status, body)
			}
			if took := time.Since(start); took < time.Second {
				t.Errorf("%s long poll answered after %v, before the backend's hold", tc.method, took)
			}
		}
	})

	t.Run("trickled body", func(t *testing.T) {
		start := time.Now()
		req := "POST /hold HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n0123456789"
		status, body, err := atkRawRequest(t, hostport, []byte(req))
		if err != nil || status != http.StatusRequestTimeout {
			t.Fatalf("a body stuck at 10 of 100 bytes: %d %q %v, want 408", status, body, err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("408 after %v, want about the 300ms body timeout", took)
		}
	})

	t.Run("hung backend", func(t *testing.T) {
		start := time.Now()
		if status, body := request("GET", "/hold?ms=8000", ""); status != http.StatusGatewayTimeout {
			t.Fatalf("a backend holding 8s: %d %q, want 504", status, body)
		}
		if took := time.Since(start); took < 2*time.Second || took > 7*time.Second {
			t.Errorf("504 after %v, want about the 2s response timeout", took)
		}
	})

	t.Run("cap", func(t *testing.T) {
		for len(arrived) > 0 {
			<-arrived
		}
		held := make(chan int, 2)
		for range 2 {
			go func() {
				resp, err := httpClient.Get(g.HTTP + "/hold?ms=1500")
				if err != nil {
					held <- 0
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				held <- resp.StatusCode
			}()
		}
		for range 2 {
			select {
			case <-arrived:
			case <-time.After(waitLimit):
				t.Fatal("the backend did not see both held requests")
			}
		}
		if status, body := request("GET", "/hold", ""); status != http.StatusServiceUnavailable {
			t.Errorf("a third request while two are held: %d %q, want 503", status, body)
		}
		for range 2 {
			if s := <-held; s != http.StatusOK {
				t.Errorf("a held request: status %d, want 200", s)
			}
		}
		if status, body := request("GET", "/hold", ""); status != http.StatusOK {
			t.Errorf("after the held requests ended: %d %q, want 200", status, body)
		}
	})
}
