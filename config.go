package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/holo/wsgate/auth"
	"github.com/holo/wsgate/auth/clientip"
	"github.com/holo/wsgate/limit"
	"github.com/holo/wsgate/proxy"
)

// config is what the flags say, checked.
type config struct {
	listen, adminListen string
	proxy               proxy.Config
	limits              limit.Config
	auth                auth.Config
	ip                  clientip.Resolver
	proxyProtocol       bool
	shutdownDelay       time.Duration
	shutdownGrace       time.Duration
	logLevel            slog.Level
	logJSON             bool
}

// flagError names the flag a bad value came from.
type flagError struct {
	flag string
	err  error
}

func (e *flagError) Error() string { return "--" + e.flag + ": " + e.err.Error() }
func (e *flagError) Unwrap() error { return e.err }

// limitFlags and authFlags name the flag behind each field of limit.Config
// and auth.Config that a *ConfigError may name. A rule's sub-fields fall
// back to the rule's entry.
var (
	limitFlags = map[string]string{
		"Rules.UserMessages":       "user-rate",
		"Rules.UserMessages.Block": "user-block",
		"Rules.IPMessages":         "ip-rate",
		"Rules.IPMessages.Block":   "ip-block",
		"Rules.UserConns":          "user-conn-rate",
		"Rules.IPConns":            "ip-conn-rate",
		"FailureMode":              "failure-mode",
		"Mode":                     "limit-mode",
		"LeaseSize":                "lease-size",
		"IPMaxConns":               "ip-max-conns",
		"Timeout":                  "redis-timeout",
		"KeyPrefix":                "key-prefix",
		"RedisURL":                 "redis-url",
	}
	authFlags = map[string]string{
		"HMACSecretFile": "jwt-hmac-secret-file",
		"KeyFile":        "jwt-key-file",
		"JWKSURL":        "jwks-url",
		"Algorithms":     "jwt-algorithms",
		"Leeway":         "jwt-leeway",
	}
)

// namedFlag turns a package's *ConfigError into a *flagError naming the
// flag that set the field, for check-config and start alike; a Redis too old
// for the limiter is --redis-url's. Other errors are returned as they are.
func namedFlag(err error) error {
	var lce *limit.ConfigError
	if errors.As(err, &lce) {
		for field := lce.Field; field != ""; {
			if flag, ok := limitFlags[field]; ok {
				return &flagError{flag, lce.Err}
			}
			i := strings.LastIndexByte(field, '.')
			if i < 0 {
				break
			}
			field = field[:i]
		}
	}
	var ace *auth.ConfigError
	if errors.As(err, &ace) {
		if flag, ok := authFlags[ace.Field]; ok {
			return &flagError{flag, ace.Err}
		}
	}
	if errors.Is(err, limit.ErrOldRedis) {
		return &flagError{"redis-url", err}
	}
	return err
}

func configFrom(c *cli.Context, demoMode bool) (*config, error) {
	cfg := &config{
		listen:        c.String("listen"),
		adminListen:   c.String("admin-listen"),
		shutdownDelay: c.Duration("shutdown-delay"),
		shutdownGrace: c.Duration("shutdown-grace"),
	}
	if demoMode && !c.IsSet("shutdown-delay") {
		// Nothing routes traffic to the demo: Ctrl-C should stop it now.
		cfg.shutdownDelay = 0
	}
	bad := func(flag string, err error) (*config, error) { return nil, &flagError{flag, err} }
	for _, name := range []string{"listen", "admin-listen"} {
		if _, _, err := net.SplitHostPort(c.String(name)); err != nil {
			return bad(name, fmt.Errorf("want host:port, got %q", c.String(name)))
		}
	}
	if !demoMode {
		if c.String("upstream") == "" {
			return bad("upstream", errors.New("required: the backend's http://host:port"))
		}
		u, err := url.Parse(c.String("upstream"))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return bad("upstream", fmt.Errorf("want http://host:port, got %q", c.String("upstream")))
		}
		cfg.proxy.Upstream = u
	}
	for _, d := range []struct {
		name string
		min  time.Duration
	}{
		{"upstream-dial-timeout", time.Millisecond}, {"handshake-timeout", time.Millisecond},
		{"pass-body-timeout", 0}, {"pass-response-timeout", 0},
		{"idle-timeout", 0}, {"message-timeout", 0}, {"write-timeout", 0}, {"ping-interval", 0}, {"shutdown-delay", 0}, {"shutdown-grace", 0},
		{"redis-timeout", time.Millisecond},
	} {
		if v := c.Duration(d.name); v < d.min {
			return bad(d.name, fmt.Errorf("must be at least %v, got %v", d.min, v))
		}
	}
	maxMsg, err := parseBytes(c.String("max-message-bytes"))
	if err != nil {
		return bad("max-message-bytes", err)
	}
	maxHdr, err := parseBytes(c.String("max-header-bytes"))
	if err != nil || maxHdr < 1024 || maxHdr > 1<<30 {
		if err == nil {
			err = fmt.Errorf("must be between 1KiB and 1GiB, got %d", maxHdr)
		}
		return bad("max-header-bytes", err)
	}
	cfg.proxy.MaxMessageBytes = maxMsg
	cfg.proxy.MaxHeaderBytes = int(maxHdr)
	cfg.proxy.HandshakeTimeout = c.Duration("handshake-timeout")
	cfg.proxy.DialTimeout = c.Duration("upstream-dial-timeout")
	cfg.proxy.IdleTimeout = c.Duration("idle-timeout")
	cfg.proxy.Shadow = c.Bool("shadow")
	cfg.proxy.MessageTimeout = c.Duration("message-timeout")
	cfg.proxy.WriteTimeout = c.Duration("write-timeout")
	cfg.proxy.PingInterval = c.Duration("ping-interval")
	cfg.proxy.Compression = c.Bool("compression")
	if cfg.proxy.ControlFrameRate, err = limit.ParseRule(c.String("control-frame-rate")); err != nil {
		return bad("control-frame-rate", err)
	}
	if cfg.proxy.MaxConns = c.Int("max-conns"); cfg.proxy.MaxConns < 0 {
		return bad("max-conns", fmt.Errorf("must not be negative, got %d", cfg.proxy.MaxConns))
	}
	cfg.proxy.PassBodyTimeout = c.Duration("pass-body-timeout")
	cfg.proxy.PassResponseTimeout = c.Duration("pass-response-timeout")
	if cfg.proxy.MaxPassRequests = c.Int("max-pass-requests"); cfg.proxy.MaxPassRequests < 0 {
		return bad("max-pass-requests", fmt.Errorf("must not be negative, got %d", cfg.proxy.MaxPassRequests))
	}

	rules := []struct {
		flag, block string
		dst         *limit.Rule
	}{
		{"user-rate", "user-block", &cfg.limits.Rules.UserMessages},
		{"ip-rate", "ip-block", &cfg.limits.Rules.IPMessages},
		{"user-conn-rate", "", &cfg.limits.Rules.UserConns},
		{"ip-conn-rate", "", &cfg.limits.Rules.IPConns},
	}
	for _, r := range rules {
		rule, err := limit.ParseRule(c.String(r.flag))
		if err != nil {
			return bad(r.flag, err)
		}
		if r.block != "" {
			rule.Block = c.Duration(r.block)
		}
		*r.dst = rule
	}
	if cfg.limits.Mode, err = limit.ParseMode(c.String("limit-mode")); err != nil {
		return bad("limit-mode", err)
	}
	cfg.limits.LeaseSize = c.Int("lease-size")
	cfg.limits.IPMaxConns = c.Int("ip-max-conns")
	fm, err := limit.ParseFailureMode(c.String("failure-mode"))
	if err != nil {
		return bad("failure-mode", err)
	}
	cfg.limits.FailureMode = fm
	cfg.limits.RedisURL = c.String("redis-url")
	// The package reads "" as its default prefix; a flag set to "" is a
	// mistake.
	if cfg.limits.KeyPrefix = c.String("key-prefix"); cfg.limits.KeyPrefix == "" {
		return bad("key-prefix", errors.New("must not be empty"))
	}
	cfg.limits.Timeout = c.Duration("redis-timeout")
	if err := cfg.limits.Validate(); err != nil {
		return nil, namedFlag(err)
	}

	if err := authConfig(c, cfg); err != nil {
		return nil, err
	}
	if err := webConfig(c, cfg); err != nil {
		return nil, err
	}
	if err := cfg.auth.Validate(); err != nil {
		return nil, namedFlag(err)
	}

	if err := cfg.logLevel.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return bad("log-level", fmt.Errorf("want debug, info, warn or error, got %q", c.String("log-level")))
	}
	switch c.String("log-format") {
	case "json":
		cfg.logJSON = true
	case "text":
	default:
		return bad("log-format", fmt.Errorf("want json or text, got %q", c.String("log-format")))
	}
	return cfg, nil
}

// authConfig reads the authentication and client-IP flags.
func authConfig(c *cli.Context, cfg *config) error {
	cfg.auth = auth.Config{
		HMACSecretFile: c.String("jwt-hmac-secret-file"),
		KeyFile:        c.String("jwt-key-file"),
		JWKSURL:        c.String("jwks-url"),
		Algorithms:     splitList(c.StringSlice("jwt-algorithms")),
		Issuer:         c.String("jwt-issuer"),
		Audiences:      splitList(c.StringSlice("jwt-audience")),
		SubjectClaim:   c.String("jwt-subject-claim"),
		Leeway:         c.Duration("jwt-leeway"),
		QueryParam:     c.String("token-query-param"),
		Cookie:         c.String("token-cookie"),
		ForwardToken:   c.Bool("forward-token"),
		AllowAnonymous: c.Bool("allow-anonymous"),
	}
	if cfg.auth.QueryParam == "" {
		return &flagError{"token-query-param", fmt.Errorf("must not be empty")}
	}
	trusted, err := clientip.ParsePrefixes(splitList(c.StringSlice("trusted-proxies")))
	if err != nil {
		return &flagError{"trusted-proxies", err}
	}
	bits := c.Int("ipv6-prefix")
	if bits < 1 || bits > 128 {
		return &flagError{"ipv6-prefix", fmt.Errorf("must be between 1 and 128, got %d", bits)}
	}
	cfg.ip = clientip.Resolver{Trusted: trusted, IPv6Prefix: bits}
	cfg.proxyProtocol = c.Bool("proxy-protocol")
	if cfg.proxyProtocol && len(trusted) == 0 {
		return &flagError{"proxy-protocol", fmt.Errorf("needs --trusted-proxies: a PROXY header is only believed from them")}
	}
	cfg.proxy.IdentityHeader = c.String("identity-header")
	cfg.proxy.StripHeaders = splitList(c.StringSlice("strip-header"))
	cfg.proxy.AllowedOrigins = splitList(c.StringSlice("allowed-origins"))
	cfg.proxy.CloseOnTokenExpiry = c.Bool("close-on-token-expiry")
	for _, h := range append([]string{cfg.proxy.IdentityHeader}, cfg.proxy.StripHeaders...) {
		if h != "" && !validHeaderName(h) {
			return &flagError{"identity-header/strip-header", fmt.Errorf("invalid header name %q", h)}
		}
	}
	return nil
}

// webConfig reads the flags of web apps: socket.io, routes without a
// token, refusal logs.
func webConfig(c *cli.Context, cfg *config) error {
	cfg.proxy.SocketIOPath = c.String("socketio-path")
	if p := cfg.proxy.SocketIOPath; p != "" && !strings.HasPrefix(p, "/") {
		return &flagError{"socketio-path", fmt.Errorf("must start with /, got %q", p)}
	}
	if cfg.proxy.SocketIOEvent = c.String("socketio-event"); cfg.proxy.SocketIOEvent == "" {
		return &flagError{"socketio-event", errors.New("must not be empty")}
	}
	// Commas separate routes, as in the environment variable: a pattern
	// that needs one writes it \x2c.
	for _, s := range splitList(c.StringSlice("skip-auth-route")) {
		rt, err := proxy.ParseRoute(s)
		if err != nil {
			return &flagError{"skip-auth-route", err}
		}
		cfg.proxy.SkipAuth = append(cfg.proxy.SkipAuth, rt)
	}
	cfg.proxy.SkipAuthPreflight = c.Bool("skip-auth-preflight")
	for _, h := range splitList(c.StringSlice("health-passthrough")) {
		if !strings.HasPrefix(h, "/") {
			return &flagError{"health-passthrough", fmt.Errorf("want a path starting with /, got %q", h)}
		}
		cfg.proxy.HealthPaths = append(cfg.proxy.HealthPaths, h)
	}
	cfg.proxy.LogSubject = c.Bool("log-subject")
	return nil
}

// splitList flattens repeated flags whose values may also be comma lists
// (as they are in environment variables).
func splitList(vs []string) []string {
	var out []string
	for _, v := range vs {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

func validHeaderName(h string) bool {
	for _, c := range h {
		if !(c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return h != ""
}

// parseBytes reads a size: a plain number of bytes or one with a KiB, MiB
// or GiB suffix (KB, MB, GB are accepted as the same powers of two).
func parseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"B", 1}} {
		if strings.HasSuffix(strings.ToUpper(t), strings.ToUpper(u.suffix)) {
			t, mult = strings.TrimSpace(t[:len(t)-len(u.suffix)]), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("want a size like 1048576 or 1MiB, got %q", s)
	}
	return n * mult, nil
}
