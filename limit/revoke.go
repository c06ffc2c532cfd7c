package limit

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Revocation refuses a subject's tokens, or one token, until Until.
// Exactly one of Subject and TokenID is set.
type Revocation struct {
	Subject string `json:"subject,omitempty"`
	// TokenID is a token's "jti" claim.
	TokenID string    `json:"tokenId,omitempty"`
	Until   time.Time `json:"until"`
	Reason  string    `json:"reason,omitempty"`
}

// revKey names a revocation in the local copy: one of the two is set.
type revKey struct {
	subject, tokenID string
}

func revKeyOf(subject, tokenID string) (revKey, error) {
	if (subject == "") == (tokenID == "") {
		return revKey{}, fmt.Errorf("%w: want exactly one of a subject and a token id", ErrBadRequest)
	}
	return revKey{subject: subject, tokenID: tokenID}, nil
}

// revField and parseRevField are the hash fields of revocations:
// "sub|<subject>" or "jti|<token id>".
func revField(k revKey) string {
	if k.subject != "" {
		return "sub|" + k.subject
	}
	return "jti|" + k.tokenID
}

func parseRevField(f string) (revKey, bool) {
	if s, ok := strings.CutPrefix(f, "sub|"); ok && s != "" {
		return revKey{subject: s}, true
	}
	if t, ok := strings.CutPrefix(f, "jti|"); ok && t != "" {
		return revKey{tokenID: t}, true
	}
	return revKey{}, false
}

func (k revKey) revocation(e record) Revocation {
	return Revocation{Subject: k.subject, TokenID: k.tokenID, Until: e.until, Reason: e.reason}
}

// Revoke records r on every replica (see Event) until r.Until, which must
// be in the future; a new Revoke of the same subject or token replaces its
// end and reason. It returns once r is stored (in Redis, and in this
// Limiter's copy, so Revoked reports it at once here); its EventRevoke
// then reaches every replica's handler, this one's included, so that each
// can close the connections of that subject or token.
func (l *Limiter) Revoke(ctx context.Context, r Revocation) error {
	k, err := revKeyOf(r.Subject, r.TokenID)
	if err != nil {
		return err
	}
	now := l.now()
	e := record{until: time.UnixMilli(r.Until.UnixMilli()), reason: r.Reason}
	if !now.Before(e.until) {
		return fmt.Errorf("%w: revocation until %v, which has passed", ErrBadRequest, r.Until)
	}
	if err := storeRecord(ctx, l, &l.revoked, k, e, false); err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	l.revoked.set(k, e, false, now)
	l.announceChange(ctx, Event{Type: EventRevoke, Subject: k.subject, TokenID: k.tokenID, Reason: e.reason, Until: e.until})
	return nil
}

// Unrevoke lifts the revocation of subject or of tokenID (exactly one of
// them) on every replica, and publishes an EventUnrevoke.
func (l *Limiter) Unrevoke(ctx context.Context, subject, tokenID string) error {
	k, err := revKeyOf(subject, tokenID)
	if err != nil {
		return err
	}
	if err := storeRecord(ctx, l, &l.revoked, k, record{}, true); err != nil {
		return fmt.Errorf("unrevoke: %w", err)
	}
	l.revoked.set(k, record{}, true, l.now())
	l.announceChange(ctx, Event{Type: EventUnrevoke, Subject: k.subject, TokenID: k.tokenID})
	return nil
}

// Revocations returns the revocations in force, subjects first, each
// group by name: as Redis holds them, or from the memory store.
func (l *Limiter) Revocations(ctx context.Context) ([]Revocation, error) {
	now := l.now()
	m := l.revoked.snapshot(now)
	if l.useRedis {
		rs, err := l.redis()
		if err != nil {
			return nil, fmt.Errorf("revocations: %w", err)
		}
		ctx, cancel := l.adminContext(ctx)
		defer cancel()
		m, _, err = l.revoked.decode(rs.client.Do(ctx, l.revoked.read(rs.client)), now)
		if err != nil {
			return nil, fmt.Errorf("revocations: %w", err)
		}
	}
	out := make([]Revocation, 0, len(m))
	for k, e := range m {
		out = append(out, k.revocation(e))
	}
	slices.SortFunc(out, func(a, b Revocation) int {
		if (a.Subject == "") != (b.Subject == "") {
			if a.Subject != "" {
				return -1 // subjects first
			}
			return 1
		}
		return cmp.Or(cmp.Compare(a.Subject, b.Subject), cmp.Compare(a.TokenID, b.TokenID))
	})
	return out, nil
}

// Revoked reports the revocation in force of subject or of tokenID (""
// for none), subject first, from this replica's copy (see Event): no I/O,
// and while no revocation is known, one atomic load.
func (l *Limiter) Revoked(subject, tokenID string) (Revocation, bool) {
	if l.revoked.cur.Load() == nil {
		return Revocation{}, false
	}
	now := l.now()
	s := l.revoked.live(now)
	if s == nil {
		return Revocation{}, false
	}
	for _, k := range [2]revKey{{subject: subject}, {tokenID: tokenID}} {
		if k.subject == "" && k.tokenID == "" {
			continue
		}
		if e, ok := s.get(k, now); ok {
			return k.revocation(e), true
		}
	}
	return Revocation{}, false
}
