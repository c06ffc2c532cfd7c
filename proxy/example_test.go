package proxy_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"

	"github.com/holo/wsgate/limit"
	"github.com/holo/wsgate/proxy"
)

// A gate in front of a backend, limiting each client to 100 messages per
// 10 seconds on the in-process memory store.
func Example() {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello from the backend")
	}))
	defer backend.Close()

	lim, err := limit.New(limit.Config{Rules: limit.Rules{
		UserMessages: limit.Rule{Limit: 100, Window: 10e9, Block: 5e9},
	}})
	if err != nil {
		panic(err)
	}
	defer lim.Close()
	upstream, _ := url.Parse(backend.URL)
	gate, err := proxy.New(proxy.Config{Upstream: upstream, Limiter: lim})
	if err != nil {
		panic(err)
	}
	front := httptest.NewServer(gate) // WebSocket handshakes are relayed, the rest passes through
	defer front.Close()

	res, err := http.Get(front.URL + "/hello")
	if err != nil {
		panic(err)
	}
	defer res.Body.Close()
	fmt.Println(res.StatusCode, res.Header.Get("Content-Type"))
	// Output: 200 text/plain; charset=utf-8
}
