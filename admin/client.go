package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Client calls the admin API of one replica.
type Client struct {
	// Base is the admin port's URL, e.g. http://127.0.0.1:9090.
	Base  string
	Token string
	HTTP  *http.Client
}

// NewClient returns a client of the API at base with the token in
// tokenFile.
func NewClient(base, tokenFile string) (*Client, error) {
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("admin url %q: want http://host:port", base)
	}
	b, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("admin token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return nil, fmt.Errorf("%w: %s", ErrNoToken, tokenFile)
	}
	return &Client{Base: strings.TrimSuffix(u.String(), "/"), Token: tok, HTTP: &http.Client{Timeout: 30 * time.Second}}, nil
}

// Call sends method path?query with body (JSON, when not nil) and returns
// the answer's JSON body. An answer that is not a success is an error
// carrying the API's message.
func (c *Client) Call(ctx context.Context, method, path string, query url.Values, body any) (json.RawMessage, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	u := c.Base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if res.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("%s (HTTP %d)", e.Error, res.StatusCode)
		}
		return nil, fmt.Errorf("HTTP %d: %s", res.StatusCode, bytes.TrimSpace(b))
	}
	return b, nil
}
