package auth

import (
	"crypto/sha256"
	"sync"
	"time"
)

// tokenCache is a bounded cache of verified tokens keyed by sha256(token), so
// the cache never holds a token itself. Each entry names the key that
// verified the token, so that a JWKS key leaving the set takes its tokens'
// entries with it. Its entries are values in one map,
// with no list and no allocation of their own: every connection of a distinct
// user keeps one while its token lives, so an entry costs about a hundred
// bytes. A full cache evicts by second chance over a short random sample (Go
// starts each map iteration at a random place): the first entry not read
// since it was stored or last sampled goes, so a token used once goes before
// the tokens that reconnects keep presenting.
type tokenCache struct {
	mu  sync.Mutex
	max int
	m   map[[sha256.Size]byte]cachedID
}

// cachedID is a verified Identity, compacted.
type cachedID struct {
	subject, issuer string
	tokenID         string
	expSec          int64  // exp as Unix seconds and nanoseconds: a year-9999
	expNsec         int32  // "never expires" token does not fit UnixNano
	used            bool   // read since an eviction pass last looked at it
	key             uint64 // verifyKey.id of the key that verified the token
	claims          map[string]any
}

// evictSample bounds the entries one eviction looks at.
const evictSample = 8

func newTokenCache(max int) *tokenCache {
	return &tokenCache{max: max, m: make(map[[sha256.Size]byte]cachedID)}
}

// get returns the identity of a cached token and the id of the key that
// verified it.
func (c *tokenCache) get(k [sha256.Size]byte) (id Identity, key uint64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok {
		return Identity{}, 0, false
	}
	if !e.used {
		e.used = true
		c.m[k] = e
	}
	return Identity{Subject: e.subject, Issuer: e.issuer, TokenID: e.tokenID, Expiry: time.Unix(e.expSec, int64(e.expNsec)).UTC(), Claims: e.claims}, e.key, true
}

// put caches the identity of a token that the key with id key verified.
func (c *tokenCache) put(k [sha256.Size]byte, id Identity, key uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		c.evict()
	}
	c.m[k] = cachedID{subject: id.Subject, issuer: id.Issuer, tokenID: id.TokenID, expSec: id.Expiry.Unix(), expNsec: int32(id.Expiry.Nanosecond()), key: key, claims: id.Claims}
}

// evict drops one entry: the first of a random sample not read since it was
// last sampled, else the first one sampled.
func (c *tokenCache) evict() {
	var first [sha256.Size]byte
	n := 0
	for k, e := range c.m {
		if !e.used {
			delete(c.m, k)
			return
		}
		if n == 0 {
			first = k
		}
		e.used = false
		c.m[k] = e
		if n++; n == evictSample {
			break
		}
	}
	delete(c.m, first)
}

func (c *tokenCache) remove(k [sha256.Size]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, k)
}

func (c *tokenCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
