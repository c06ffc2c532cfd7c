package auth

import (
	"net/http"
	"net/url"
	"slices"
	"testing"
)

func TestPrepareUpstream(t *testing.T) {
	k := mustKeys(t)
	on := newTestVerifier(t, Config{HMACSecretFiles: []string{writeFile(t, "s", k.secret)}, Cookie: "session"})
	fwd := newTestVerifier(t, Config{HMACSecretFiles: []string{writeFile(t, "s", k.secret)}, Cookie: "session", ForwardToken: true})
	off := newTestVerifier(t, Config{})
	tests := []struct {
		name       string
		v          *Verifier
		hdr        http.Header
		query      string
		wantHdr    http.Header
		wantQuery  string
		wantProtos []string
		wantMarker bool
	}{
		{name: "everything stripped", v: on,
			hdr: http.Header{"Authorization": {"Bearer abc"}, "Sec-Websocket-Protocol": {"wsgate, bearer.abc", "chat"},
				"Cookie": {"a=1; session=abc", "session=x; b=2"}},
			query:   "access_token=abc&room=1",
			wantHdr: http.Header{"Sec-Websocket-Protocol": {"chat"}, "Cookie": {"a=1", "b=2"}}, wantQuery: "room=1",
			wantProtos: []string{"chat"}, wantMarker: true},
		{name: "only marker and bearer", v: on,
			hdr:        http.Header{"Sec-Websocket-Protocol": {"wsgate,bearer.abc"}, "Cookie": {"session=abc"}},
			wantHdr:    http.Header{},
			wantMarker: true},
		{name: "basic auth kept", v: on,
			hdr: http.Header{"Authorization": {"Basic Zm9vOmJhcg=="}}, wantHdr: http.Header{"Authorization": {"Basic Zm9vOmJhcg=="}}},
		{name: "forward token keeps it, marker still goes", v: fwd,
			hdr:       http.Header{"Authorization": {"Bearer abc"}, "Sec-Websocket-Protocol": {"wsgate, bearer.abc, chat"}},
			query:     "access_token=abc",
			wantHdr:   http.Header{"Authorization": {"Bearer abc"}, "Sec-Websocket-Protocol": {"bearer.abc, chat"}},
			wantQuery: "access_token=abc", wantProtos: []string{"bearer.abc", "chat"}, wantMarker: true},
		{name: "auth disabled: token is not ours", v: off,
			hdr:       http.Header{"Authorization": {"Bearer abc"}, "Sec-Websocket-Protocol": {"chat, wsgate"}},
			query:     "access_token=abc",
			wantHdr:   http.Header{"Authorization": {"Bearer abc"}, "Sec-Websocket-Protocol": {"chat"}},
			wantQuery: "access_token=abc", wantProtos: []string{"chat"}, wantMarker: true},
		{name: "no protocols", v: on, hdr: http.Header{"X-A": {"1"}}, wantHdr: http.Header{"X-A": {"1"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, _ := url.ParseQuery(tc.query)
			protos, marker := tc.v.PrepareUpstream(tc.hdr, q)
			if !slices.Equal(protos, tc.wantProtos) || marker != tc.wantMarker {
				t.Fatalf("protocols %q marker %v, want %q %v", protos, marker, tc.wantProtos, tc.wantMarker)
			}
			if len(tc.hdr) != len(tc.wantHdr) {
				t.Fatalf("header %v, want %v", tc.hdr, tc.wantHdr)
			}
			for k, v := range tc.wantHdr {
				if !slices.Equal(tc.hdr[k], v) {
					t.Fatalf("header %s = %q, want %q", k, tc.hdr[k], v)
				}
			}
			if got := q.Encode(); got != tc.wantQuery {
				t.Fatalf("query %q, want %q", got, tc.wantQuery)
			}
		})
	}
}

func TestExtractOrder(t *testing.T) {
	k := mustKeys(t)
	v := newTestVerifier(t, Config{HMACSecretFiles: []string{writeFile(t, "s", k.secret)}, Cookie: "c", QueryParam: "t"})
	r := reqWith("", "none")
	r.AddCookie(&http.Cookie{Name: "c", Value: "fromcookie"})
	step := func(want string) {
		t.Helper()
		if got, _ := v.extract(r); got != want {
			t.Fatalf("extract = %q, want %q", got, want)
		}
	}
	step("fromcookie")
	r.Header.Add("Sec-WebSocket-Protocol", "wsgate")
	r.Header.Add("Sec-WebSocket-Protocol", "bearer.fromproto")
	step("fromproto")
	r.URL.RawQuery = "t=fromquery"
	step("fromquery")
	r.Header.Set("Authorization", "bEaReR fromheader")
	step("fromheader")
}

func FuzzExtractToken(f *testing.F) {
	f.Add("Bearer a.b.c", "access_token=x", "wsgate, bearer.a.b.c", "session=y")
	f.Add("", "", "bearer.", "")
	f.Add("bearer ", "access_token=&access_token=z", ",,", "session")
	v, err := NewVerifier(f.Context(), Config{HMACSecretFiles: []string{writeFile(f, "s", []byte("0123456789abcdef0123456789abcdef"))}, Cookie: "session"})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(v.Close)
	f.Fuzz(func(t *testing.T, authz, query, proto, cookie string) {
		r, _ := http.NewRequest(http.MethodGet, "http://h/", nil)
		r.URL.RawQuery = query
		r.Header.Set("Authorization", authz)
		r.Header.Set("Sec-WebSocket-Protocol", proto)
		r.Header.Set("Cookie", cookie)
		tok, ok := v.extract(r)
		if ok && tok == "" {
			t.Fatal("empty token reported as found")
		}
		if _, err := v.Authenticate(t.Context(), r); err == nil && ok {
			t.Fatalf("fuzzed token %q verified", tok)
		}
		h := r.Header.Clone()
		q := r.URL.Query()
		protos, _ := v.PrepareUpstream(h, q)
		for _, p := range protos {
			if p == MarkerProtocol || len(p) > 7 && p[:7] == bearerProtocol {
				t.Fatalf("protocol %q forwarded", p)
			}
		}
		if ok {
			h2 := r.Header.Clone()
			v.PrepareUpstream(h2, q)
			r2 := &http.Request{Header: h2, URL: &url.URL{RawQuery: q.Encode()}}
			if tok2, ok2 := v.extract(r2); ok2 && tok2 == tok {
				t.Fatalf("token %q still extractable after PrepareUpstream", tok)
			}
		}
	})
}
