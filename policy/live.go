package policy

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Live is the policy in force, swapped whole when its file changes. Load is
// safe from any goroutine and costs one atomic read.
type Live struct {
	cur  atomic.Pointer[Policy]
	file string

	mu   sync.Mutex // serialises reloads; guards last
	last []byte     // the content of the policy in force
}

// NewLive loads file and returns it as the policy in force.
func NewLive(file string) (*Live, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("rules file: %w", err)
	}
	p, err := Parse(file, data)
	if err != nil {
		return nil, err
	}
	l := &Live{file: file, last: data}
	l.cur.Store(p)
	return l, nil
}

// Load returns the policy in force.
func (l *Live) Load() *Policy { return l.cur.Load() }

// File returns the rules file's path.
func (l *Live) File() string { return l.file }

// Reload reads the file again and, when its content changed and is valid,
// makes it the policy in force. It returns the new policy (nil when the
// content did not change) or why the file was not taken; on any error the
// policy in force stays.
func (l *Live) Reload() (*Policy, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	data, err := os.ReadFile(l.file)
	if err != nil {
		return nil, fmt.Errorf("rules file: %w", err)
	}
	if bytes.Equal(data, l.last) {
		return nil, nil
	}
	p, err := Parse(l.file, data)
	if err != nil {
		// Remember nothing: the file is read again at the next poll, and
		// its errors reported again only when it changes (see Watch).
		return nil, err
	}
	l.last = data
	l.cur.Store(p)
	return p, nil
}

// Watch reloads the file every period until ctx ends, and at once on each
// value of now (SIGHUP), calling report with each new policy or each new
// error. Reading the path each time follows a Kubernetes ConfigMap volume's
// symlink swap. The same invalid content is reported once.
func (l *Live) Watch(ctx context.Context, period time.Duration, now <-chan struct{}, report func(*Policy, error)) {
	t := time.NewTicker(period)
	defer t.Stop()
	var lastErr string
	for {
		forced := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-now:
			forced = true
		}
		p, err := l.Reload()
		switch {
		case err != nil && (forced || err.Error() != lastErr):
			lastErr = err.Error()
			report(nil, err)
		case err == nil:
			lastErr = ""
			if p != nil {
				report(p, nil)
			}
		}
	}
}
