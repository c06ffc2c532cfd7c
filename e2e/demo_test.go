//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// TestDemoBurst runs `wsgate demo` as a newcomer would and does what the
// page's "Send burst" button does: 150 messages on /ws. The demo runs the
// defaults (100 per 10 s on the memory store), so the echoes stop at 100
// and the 101st gets the 429 JSON and close 4008.
func TestDemoBurst(t *testing.T) {
	t.Parallel()
	listen, p := startDemo(t, "text")
	waitFor(t, "the demo page", func() bool {
		if p.exited() {
			t.Fatalf("wsgate demo exited:\n%s", p.out.String())
		}
		res, err := httpClient.Get("http://" + listen + "/")
		if err != nil {
			return false
		}
		defer res.Body.Close()
		page, _ := io.ReadAll(res.Body)
		return res.StatusCode == http.StatusOK && strings.Contains(string(page), "Send burst")
	})

	// The browser's first request after the page: served, not a failed upgrade.
	if res, err := httpClient.Get("http://" + listen + "/favicon.ico"); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("/favicon.ico: %v %v", res, err)
	} else {
		res.Body.Close()
	}

	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+listen+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	res := burst(c, msgs("burst", 150))
	if len(res.echoes) != 100 {
		t.Fatalf("%d echoes, want the 100 allowed", len(res.echoes))
	}
	if res.refused == nil {
		t.Fatalf("no 429 after 150 messages (%d echoes, close %d)", len(res.echoes), res.close.Code)
	}
	parseRefusal(t, res.refused, "user")
	if res.close.Code != 4008 || res.close.Reason != "Rate limit" {
		t.Fatalf("close %d %q, want 4008 \"Rate limit\"", res.close.Code, res.close.Reason)
	}
}

// TestDemoJSONLog: under --log-format json, everything `wsgate demo` writes is one JSON object
// per line, the hint with the page's address included, so a log shipper never meets prose.
func TestDemoJSONLog(t *testing.T) {
	t.Parallel()
	listen, p := startDemo(t, "json")
	waitFor(t, "the demo's hint", func() bool {
		if p.exited() {
			t.Fatalf("wsgate demo exited:\n%s", p.out.String())
		}
		return strings.Contains(p.out.String(), "open the page in a browser")
	})
	for _, line := range strings.Split(strings.TrimSpace(p.out.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("not a JSON line: %q", line)
		} else if m["msg"] == "demo: open the page in a browser" && m["page"] != "http://"+listen+"/" {
			t.Errorf("the hint names page %v, want http://%s/", m["page"], listen)
		}
	}
}

// startDemo runs `wsgate demo` on free ports with --log-format format and args.
func startDemo(t *testing.T, format string, args ...string) (listen string, p *proc) {
	t.Helper()
	listen = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	admin := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	cmd := exec.Command(gateBin, append([]string{"demo", "--listen", listen, "--admin-listen", admin, "--log-format", format}, args...)...)
	cmd.Env = gateEnviron()
	return listen, startProc(t, "wsgate demo", cmd)
}
