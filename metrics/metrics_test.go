package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestCodeLabel(t *testing.T) {
	for code, want := range map[int]string{1000: "1000", 1006: "1006", 1014: "1014", 4008: "4008",
		3001: "3xxx", 4001: "4xxx", 1004: "other", 0: "other", 5000: "other"} {
		if got := CodeLabel(code); got != want {
			t.Errorf("CodeLabel(%d) = %q, want %q", code, got, want)
		}
	}
}

func TestAdminHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, "v1", "abc")
	m.WatchRedis(func() bool { return false })
	m.SetRules("rules.yaml", "0123", []RuleSeries{{"user", "message", "chat", "pro"}})
	var ready atomic.Bool
	ready.Store(true)
	srv := httptest.NewServer(AdminHandler(reg, ready.Load))
	defer srv.Close()
	get := func(path string) (int, string) {
		res, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("readyz %d, want 200", code)
	}
	ready.Store(false)
	if code, _ := get("/readyz"); code != 503 {
		t.Fatalf("readyz while draining %d, want 503", code)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("healthz %d", code)
	}
	_, body := get("/metrics")
	for _, want := range []string{
		`holo_ws_build_info{commit="abc",version="v1"} 1`,
		`holo_ws_redis_up 0`,
		`holo_ws_rate_limited_total{kind="message",rule="chat",scope="user",tier="pro"} 0`,
		`holo_ws_rules_info{sha256="0123",source="rules.yaml"} 1`,
		`holo_ws_rules_reloads_total{result="error"} 0`,
		`holo_ws_connections_total{result="ok"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
