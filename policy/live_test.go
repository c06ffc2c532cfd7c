package policy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func rulesWith(limit string) string {
	return "rules:\n  - {name: user-messages, key: user, limits: [" + limit + "]}\n"
}

func TestLiveReload(t *testing.T) {
	f := filepath.Join(t.TempDir(), "rules.yaml")
	write := func(s string) {
		if err := os.WriteFile(f, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(rulesWith("100/10s"))
	l, err := NewLive(f)
	if err != nil {
		t.Fatal(err)
	}
	first := l.Load()
	if p, err := l.Reload(); p != nil || err != nil {
		t.Fatalf("unchanged file: %v, %v", p, err)
	}
	write(rulesWith("200/10s"))
	p, err := l.Reload()
	if err != nil || p == nil || l.Load() != p || p.Rules[0].Limits[0].Limit != 200 || p.Hash == first.Hash {
		t.Fatalf("changed file: %+v, %v", p, err)
	}
	write(rulesWith("lots/10s"))
	if p, err := l.Reload(); p != nil || err == nil || !strings.Contains(err.Error(), "rules.yaml:2:") {
		t.Fatalf("invalid file: %v, %v", p, err)
	}
	if l.Load().Rules[0].Limits[0].Limit != 200 {
		t.Fatal("an invalid file replaced the rules in force")
	}
}

// TestLiveWatchConfigMap swaps the file the way the kubelet updates a
// ConfigMap volume: the file is a symlink to ..data/rules.yaml, and ..data
// a symlink renamed onto a new directory.
func TestLiveWatchConfigMap(t *testing.T) {
	dir := t.TempDir()
	version := func(name, content string) {
		if err := os.MkdirAll(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "rules.yaml"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..v1", rulesWith("100/10s"))
	f := filepath.Join(dir, "rules.yaml")
	if err := os.Symlink("..data/rules.yaml", f); err != nil {
		t.Fatal(err)
	}
	l, err := NewLive(f)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reports := make(chan error, 10)
	hup := make(chan struct{})
	go l.Watch(ctx, time.Hour, hup, func(p *Policy, err error) { reports <- err })

	version("..v2", rulesWith("300/10s"))
	hup <- struct{}{}
	if err := <-reports; err != nil || l.Load().Rules[0].Limits[0].Limit != 300 {
		t.Fatalf("after the swap: %v, %+v", err, l.Load().Rules)
	}
	version("..v3", "rules: [oops")
	hup <- struct{}{}
	if err := <-reports; err == nil {
		t.Fatal("an invalid file was not reported")
	}
	hup <- struct{}{} // a forced reload reports the same error again
	if err := <-reports; err == nil || l.Load().Rules[0].Limits[0].Limit != 300 {
		t.Fatalf("second report: %v", err)
	}
}
