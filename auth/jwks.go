package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/holo/wsgate/internal/redact"
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
// and reads the body without a size limit.
//
// Every fetch belongs to the source: it runs on a goroutine of its own
// under the source's context, which only stop cancels, and at most one runs
// at a time. Whoever needs the result (the refresh loop, NewVerifier, a
// request with an unknown kid) waits for it under its own context, so a
// client that hangs up stops waiting but never aborts the fetch that the
// next token needs.
type jwksSource struct {
	url      string
	shown    string // url as logs and errors may print it (redact.URL)
	client   *http.Client
	log      *slog.Logger
	now      func() time.Time
	nextID   func() uint64 // hands out verifyKey.id, shared with the key files
	interval time.Duration
	minGap   time.Duration

	keys atomic.Pointer[[]verifyKey]

	mu          sync.Mutex
	inflight    chan struct{} // closed when the fetch under way ends
	lastAttempt time.Time
	lastErr     error
	stopped     bool // set by stop; no fetch starts after it

	ctx    context.Context // cancelled by stop; aborts fetches
	cancel context.CancelFunc
	wg     sync.WaitGroup // the refresh loop and the fetch under way

	// waiting, when set (by tests), is called as refresh starts to wait.
	waiting func()
}

func newJWKSSource(u string, c *http.Client, log *slog.Logger, now func() time.Time, nextID func() uint64) *jwksSource {
	s := &jwksSource{url: u, shown: redact.URL(u), client: c, log: log, now: now, nextID: nextID, interval: jwksInterval,
		minGap: jwksMinRefresh, lastErr: errJWKSNotFetched}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// start waits for a first fetch until ctx is done and starts the refresh
// loop.
func (s *jwksSource) start(ctx context.Context) {
	s.refresh(ctx, false)
	s.wg.Add(1)
	go s.refreshLoop()
}

// stop aborts the fetch under way and waits for the source's goroutines.
func (s *jwksSource) stop() {
	s.mu.Lock()
	s.stopped = true
	s.cancel()
	s.mu.Unlock()
	s.wg.Wait()
}

// current returns the last good keys, nil before the first success.
func (s *jwksSource) current() []verifyKey {
	if p := s.keys.Load(); p != nil {
		return *p
	}
	return nil
}

// holds reports whether the key with id is in the last good set.
func (s *jwksSource) holds(id uint64) bool {
	for _, k := range s.current() {
		if k.id == id {
			return true
		}
	}
	return false
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

// refresh starts a fetch unless one is under way or, when limited, unless
// the last attempt is younger than minGap; then it waits for the fetch under
// way, if any, until ctx is done. It reports whether it returned because ctx
// was done first.
func (s *jwksSource) refresh(ctx context.Context, limited bool) (abandoned bool) {
	done := s.startFetch(limited)
	if done == nil {
		return false
	}
	if s.waiting != nil {
		s.waiting()
	}
	select {
	case <-done:
		return false
	case <-ctx.Done():
		return true
	}
}

// startFetch returns the channel that closes when the fetch under way ends,
// starting that fetch when none is under way and the rate limit allows it;
// nil when nothing is under way.
func (s *jwksSource) startFetch(limited bool) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight != nil {
		return s.inflight
	}
	now := s.now()
	if s.stopped || limited && !s.lastAttempt.IsZero() && now.Sub(s.lastAttempt) < s.minGap {
		return nil
	}
	s.lastAttempt = now
	ch := make(chan struct{})
	s.inflight = ch
	s.wg.Add(1)
	go s.fetchAndKeep(ch)
	return ch
}

// fetchAndKeep runs one fetch under the source's context, keeps its keys
// when it succeeds, and closes done.
func (s *jwksSource) fetchAndKeep(done chan struct{}) {
	defer s.wg.Done()
	keys, err := s.fetch(s.ctx)

	s.mu.Lock()
	if err == nil {
		s.identify(keys)
		s.keys.Store(&keys)
	}
	s.lastErr = err
	s.inflight = nil
	close(done)
	s.mu.Unlock()
	if err != nil {
		s.log.Warn("auth: jwks refresh failed; keeping the last good set", "url", s.shown, "err", err)
	} else {
		s.log.Debug("auth: jwks refreshed", "url", s.shown, "keys", len(keys))
	}
}

// identify gives each key of a new set its id: the id of the same key in
// the last good set (same kid, alg and public key), a new one otherwise. A
// cached token names the id of the key that verified it, so it is admitted
// exactly while that key stays in the set. s.mu must be held.
func (s *jwksSource) identify(keys []verifyKey) {
	old := s.current()
next:
	for i := range keys {
		for j := range old {
			if keys[i].same(&old[j]) {
				keys[i].id = old[j].id
				continue next
			}
		}
		keys[i].id = s.nextID()
	}
}

// hideURL puts the redacted URL into err's *url.Error, whose message quotes
// the URL it was given, query string included.
func (s *jwksSource) hideURL(err error) error {
	if ue := (*url.Error)(nil); errors.As(err, &ue) {
		ue.URL = s.shown
	}
	return err
}

func (s *jwksSource) fetch(ctx context.Context) ([]verifyKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", s.hideURL(err))
	}
	req.Header.Set("Accept", "application/json")
	res, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", s.hideURL(err))
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
			s.log.Warn("auth: jwks symmetric (oct) key refused", "url", s.shown, "kid", k.KeyID())
			continue
		}
		vk, err := keyFromJWK(k)
		if err != nil {
			if !errors.Is(err, errSkipKey) {
				s.log.Warn("auth: jwks key skipped", "url", s.shown, "kid", k.KeyID(), "err", err)
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
