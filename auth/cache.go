package auth

import (
	"container/list"
	"crypto/sha256"
	"sync"
)

// tokenCache is a bounded LRU of verified tokens keyed by sha256(token), so
// the cache never holds a token itself.
type tokenCache struct {
	mu  sync.Mutex
	max int
	ll  *list.List // front = most recently used; values are *cacheEntry
	m   map[[sha256.Size]byte]*list.Element
}

type cacheEntry struct {
	key [sha256.Size]byte
	id  Identity
}

func newTokenCache(max int) *tokenCache {
	return &tokenCache{max: max, ll: list.New(), m: make(map[[sha256.Size]byte]*list.Element)}
}

func (c *tokenCache) get(k [sha256.Size]byte) (Identity, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok {
		return Identity{}, false
	}
	c.ll.MoveToFront(e)
	return e.Value.(*cacheEntry).id, true
}

func (c *tokenCache) put(k [sha256.Size]byte, id Identity) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok {
		e.Value.(*cacheEntry).id = id
		c.ll.MoveToFront(e)
		return
	}
	c.m[k] = c.ll.PushFront(&cacheEntry{key: k, id: id})
	for c.ll.Len() > c.max {
		last := c.ll.Back()
		c.ll.Remove(last)
		delete(c.m, last.Value.(*cacheEntry).key)
	}
}

func (c *tokenCache) remove(k [sha256.Size]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok {
		c.ll.Remove(e)
		delete(c.m, k)
	}
}

func (c *tokenCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
