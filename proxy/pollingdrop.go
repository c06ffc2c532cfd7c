package proxy

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/holo/wsgate/policy"
)

// A rules file's drop action on engine.io's polling transport. The dropped
// packet is cut out of the POST the upstream gets (the packets around it
// keep their order), and the refusal event waits for the session's next
// GET: the gate adds it to the upstream's answer, as it adds a refusal that
// closes the session. As on a WebSocket, one notice waits at most: a later
// drop's replaces it. The client reads it when the upstream next answers
// that GET: at once when the app sends something, at the latest at
// engine.io's next ping (25 s by default). The drops are counted per
// session for close-after, since each POST is a request of its own.

// pollDrop is what the gate keeps of an upstream session whose client had
// packets dropped.
type pollDrop struct {
	drops   dropCounts // by rule, for close-after
	notice  []byte     // the refusal event the next GET's answer carries
	expires time.Time
}

// pollDrops are the pollDrops by sid, bounded as every sidTable.
type pollDrops struct {
	mu sync.Mutex
	t  sidTable[*pollDrop]
}

func newPollDrops() *pollDrops {
	return &pollDrops{t: newSidTable(func(e *pollDrop) time.Time { return e.expires })}
}

// dropped counts a drop by rule r in session sid of the client whose IP
// key is ip, as connRules.dropped does for a WebSocket (dropCounts), and
// reports whether it is one too many: the session is then closed instead.
// Only a rule with a close-after keeps count. A session the gate cannot
// keep track of (its client holds maxSessionsPerIP others, or the table is
// full) is closed.
func (pd *pollDrops) dropped(sid, ip string, r *policy.Rule, tier string, now time.Time) bool {
	if r.CloseAfter == 0 {
		return false
	}
	pd.mu.Lock()
	defer pd.mu.Unlock()
	e := pd.entry(sid, ip, now)
	if e == nil {
		return true
	}
	closes, until := e.drops.add(r, tier, now)
	e.expires = later(e.expires, until)
	return closes
}

// entry returns sid's entry, made if need be and alive for sessionTTL
// more; nil when it does not fit. Callers hold pd.mu.
func (pd *pollDrops) entry(sid, ip string, now time.Time) *pollDrop {
	e, ok := pd.t.get(sid)
	if !ok {
		e = &pollDrop{drops: make(dropCounts), expires: now.Add(sessionTTL)}
		if !pd.t.put(sid, ip, e, now) {
			return nil
		}
	}
	e.expires = later(e.expires, now.Add(sessionTTL))
	return e
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// notify sets notice for sid's next GET, in place of one not sent yet.
func (pd *pollDrops) notify(sid, ip string, notice []byte) {
	pd.mu.Lock()
	defer pd.mu.Unlock()
	if e := pd.entry(sid, ip, time.Now()); e != nil {
		e.notice = notice
	}
}

// take returns and forgets sid's notice.
func (pd *pollDrops) take(sid string) []byte {
	pd.mu.Lock()
	defer pd.mu.Unlock()
	e, ok := pd.t.get(sid)
	if !ok {
		return nil
	}
	out := e.notice
	e.notice = nil
	return out
}

// dropsPacket reports whether the refusal of pkt by rule r drops it rather
// than closing the session: the rule drops, pkt neither carries nor
// announces binary attachments (the app would read the packets after it
// as garbage), and
// the session has not reached the rule's close-after.
func (p *Proxy) dropsPacket(sid, ip string, r *policy.Rule, tier string, pkt []byte) bool {
	if r == nil || r.Action != policy.Drop {
		return false
	}
	if len(pkt) >= 1 && pkt[0] == eioBinary ||
		len(pkt) >= 2 && pkt[0] == eioMessage && (pkt[1] == sioTypeBinaryEvent || pkt[1] == sioTypeBinaryAck) {
		// An attachment ('b' and base64), or a packet that announces some.
		return false
	}
	return !p.web.drops.dropped(sid, ip, r, tier, time.Now())
}

// addPollNotice adds the refusal event of the packets dropped from sid to
// the upstream's answer to its GET: the upstream's packets, then the event
// (before the upstream's close, when it sent one).
func (p *Proxy) addPollNotice(res *http.Response, sid string) error {
	if res.StatusCode != http.StatusOK {
		return nil
	}
	notice := p.web.drops.take(sid)
	if notice == nil {
		return nil
	}
	got, err := decodedBody(res)
	if err != nil {
		return err
	}
	closing := bytes.Equal(got, []byte{eioClose}) || bytes.HasSuffix(got, []byte{eioSep, eioClose})
	if closing {
		got = bytes.TrimSuffix(bytes.TrimSuffix(got, []byte{eioClose}), []byte{eioSep})
	}
	parts := [][]byte{notice}
	if len(got) > 0 {
		parts = [][]byte{got, notice}
	}
	if closing {
		parts = append(parts, []byte{eioClose})
	}
	out := bytes.Join(parts, []byte{eioSep})
	res.Body = io.NopCloser(bytes.NewReader(out))
	res.ContentLength = int64(len(out))
	res.Header.Del("Content-Encoding")
	res.Header.Set("Content-Length", strconv.Itoa(len(out)))
	return nil
}
