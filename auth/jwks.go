package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

const (
	jwksInterval     = 5 * time.Minute  // background refresh after a success
	jwksMinRefresh   = 10 * time.Second // on-demand refreshes are at most this frequent
	maxJWKSBodyBytes = 1 << 20
)

var errJWKSNotFetched = errors.New("jwks not fetched yet")

// jwksSource keeps the last good key set of a JWKS URL.
//
// It does not use jwk.Cache (httprc v1.0.6): that cache starts goroutines
// nobody can wait for, fetches with client.Get and no context (so shutdown
// cannot abort a hanging fetch), never closes the body of a non-200 answer,
// and reads the body without a size limit. Here the only goroutine is the
// refresh loop, which stop waits for, and on-demand fetches run on the
// caller's goroutine under its context.
type jwksSource struct {
	url      string
	client   *http.Client
	log      *slog.Logger
	now      func() time.Time
	interval time.Duration
	minGap   time.Duration

	keys atomic.Pointer[[]verifyKey]

	mu          sync.Mutex
	inflight    chan struct{} // closed when the fetch under way ends
	lastAttempt time.Time
	lastErr     error

	ctx    context.Context // cancelled by stop; aborts fetches
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newJWKSSource(u string, c *http.Client, log *slog.Logger, now func() time.Time) *jwksSource {
	s := &jwksSource{url: u, client: c, log: log, now: now, interval: jwksInterval, minGap: jwksMinRefresh,
		lastErr: errJWKSNotFetched}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// start fetches once under ctx and starts the refresh loop.
func (s *jwksSource) start(ctx context.Context) {
	s.refresh(ctx, false)
	s.wg.Add(1)
	go s.refreshLoop()
}

func (s *jwksSource) stop() {
	s.cancel()
	s.wg.Wait()
}

// current returns the last good keys, nil before the first success.
func (s *jwksSource) current() []verifyKey {
	if p := s.keys.Load(); p != nil {
		return *p
	}
	return nil
}

// failing reports whether the latest fetch attempt failed.
func (s *jwksSource) failing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr != nil
}

func (s *jwksSource) lastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastErr == nil {
		return errors.New("jwks: key not found")
	}
	return s.lastErr
}

func (s *jwksSource) refreshLoop() {
	defer s.wg.Done()
	delay := s.interval
	if s.failing() {
		delay = s.minGap
	}
	for {
		t := time.NewTimer(delay)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		s.refresh(s.ctx, false)
		if s.failing() {
			delay = min(2*delay, s.interval)
			if delay < s.minGap {
				delay = s.minGap
			}
		} else {
			delay = s.interval
		}
	}
}

// refresh fetches the set unless a fetch is under way (then it waits for
// that one) or, when limited, unless the last attempt is younger than minGap.
func (s *jwksSource) refresh(ctx context.Context, limited bool) {
	s.mu.Lock()
	if ch := s.inflight; ch != nil {
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		return
	}
	now := s.now()
	if limited && !s.lastAttempt.IsZero() && now.Sub(s.lastAttempt) < s.minGap {
		s.mu.Unlock()
		return
	}
	s.lastAttempt = now
	ch := make(chan struct{})
	s.inflight = ch
	s.mu.Unlock()

	keys, err := s.fetch(ctx)

	s.mu.Lock()
	if err == nil {
		s.keys.Store(&keys)
	}
	s.lastErr = err
	s.inflight = nil
	close(ch)
	s.mu.Unlock()
	if err != nil {
		s.log.Warn("auth: jwks refresh failed; keeping the last good set", "url", s.url, "err", err)
	} else {
		s.log.Debug("auth: jwks refreshed", "url", s.url, "keys", len(keys))
	}
}

func (s *jwksSource) fetch(ctx context.Context) ([]verifyKey, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	res, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
		return nil, fmt.Errorf("jwks: status %s", res.Status)
	}
	body, err := io.ReadAll(io.LimitReader(res.Body, maxJWKSBodyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("jwks: read: %w", err)
	}
	if len(body) > maxJWKSBodyBytes {
		return nil, fmt.Errorf("jwks: body larger than %d bytes", maxJWKSBodyBytes)
	}
	set, err := jwk.Parse(body)
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	keys := make([]verifyKey, 0, set.Len())
	for i := range set.Len() {
		k, _ := set.Key(i)
		if k.KeyType() == jwa.OctetSeq {
			// The set is published: its secret is anybody's, and a token
			// signed with it would verify.
			s.log.Warn("auth: jwks symmetric (oct) key refused", "url", s.url, "kid", k.KeyID())
			continue
		}
		vk, err := keyFromJWK(k)
		if err != nil {
			if !errors.Is(err, errSkipKey) {
				s.log.Warn("auth: jwks key skipped", "url", s.url, "kid", k.KeyID(), "err", err)
			}
			continue
		}
		keys = append(keys, vk)
	}
	if len(keys) == 0 {
		return nil, errors.New("jwks: no usable signature keys")
	}
	return keys, nil
}
