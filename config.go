package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gobwas/ws"
	"github.com/urfave/cli/v2"

	"github.com/holo/wsgate/auth"
	"github.com/holo/wsgate/auth/clientip"
	"github.com/holo/wsgate/internal/redact"
	"github.com/holo/wsgate/internal/suggest"
	"github.com/holo/wsgate/limit"
	"github.com/holo/wsgate/policy"
	"github.com/holo/wsgate/proxy"
)

// config is what the flags say, checked.
type config struct {
	listen, adminListen string
	// adminTokenFile turns the admin API on; "" leaves it off.
	adminTokenFile string
	proxy          proxy.Config
	limits         limit.Config
	auth           auth.Config
	ip             clientip.Resolver
	proxyProtocol  bool
	shutdownDelay  time.Duration
	shutdownGrace  time.Duration
	logLevel       slog.Level
	logJSON        bool
	// rules is --rules-file's policy; nil under the rule flags.
	rules *policy.Live
	// redisRequired keeps /readyz at 503 while Redis is not reachable.
	redisRequired bool
	// serviceLinks are the Kubernetes service-link variables found in the
	// environment, logged as ignored at start.
	serviceLinks []string
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
		"HMACSecretFiles": "jwt-hmac-secret-file",
		"KeyFiles":        "jwt-key-file",
		"JWKSURL":         "jwks-url",
		"Algorithms":      "jwt-algorithms",
		"Leeway":          "jwt-leeway",
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
	links, err := checkEnv(os.Environ(), c.Command.Flags)
	if err != nil {
		return nil, err
	}
	cfg := &config{
		serviceLinks:   links,
		listen:         c.String("listen"),
		adminListen:    c.String("admin-listen"),
		adminTokenFile: c.String("admin-token-file"),
		shutdownDelay:  c.Duration("shutdown-delay"),
		shutdownGrace:  c.Duration("shutdown-grace"),
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
	if f := cfg.adminTokenFile; f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return bad("admin-token-file", err)
		}
		if strings.TrimSpace(string(b)) == "" {
			return bad("admin-token-file", fmt.Errorf("%s is empty", f))
		}
	}
	if !demoMode {
		if c.String("upstream") == "" {
			return bad("upstream", errors.New("required: the backend's http://host:port"))
		}
		u, err := url.Parse(c.String("upstream"))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return bad("upstream", fmt.Errorf("want http://host:port, got %q", redact.URL(c.String("upstream"))))
		}
		cfg.proxy.Upstream = u
	}
	for _, d := range []struct {
		name string
		min  time.Duration
	}{
		{"upstream-dial-timeout", time.Millisecond}, {"handshake-timeout", time.Millisecond},
		{"pass-body-timeout", 0}, {"pass-response-timeout", 0},
		{"idle-timeout", 0}, {"message-timeout", 0}, {"write-timeout", 0}, {"ping-interval", 0}, {"shutdown-delay", 0}, {"shutdown-grace", 0}, {"drain-spread", 0}, {"max-conn-age", 0},
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
	if cfg.proxy.MaxPendingHandshakes = c.Int("max-pending-handshakes"); cfg.proxy.MaxPendingHandshakes < 0 {
		return bad("max-pending-handshakes", fmt.Errorf("must not be negative, got %d", cfg.proxy.MaxPendingHandshakes))
	}
	switch code := c.Int("drain-code"); code {
	case 1001, 1012:
		cfg.proxy.DrainCode = ws.StatusCode(code)
	default:
		return bad("drain-code", fmt.Errorf("want 1012 or 1001, got %d", code))
	}
	cfg.proxy.DrainSpread = c.Duration("drain-spread")
	cfg.proxy.MaxConnAge = c.Duration("max-conn-age")
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
	if f := c.String("rules-file"); f != "" {
		for _, r := range rules {
			for _, name := range []string{r.flag, r.block} {
				if name != "" && c.IsSet(name) {
					return bad("rules-file", fmt.Errorf("--%s is a rule flag: with a rules file every rule is in the file", name))
				}
			}
		}
		if cfg.rules, err = policy.NewLive(f); err != nil {
			return nil, &flagError{"rules-file", err}
		}
		// The rules file's rules are decided by Limiter.Charge; the flag
		// rules' defaults must not apply beside them.
		cfg.limits.Rules = limit.Rules{}
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
	if u := cfg.limits.RedisURL; u != "" && !strings.Contains(u, "://") {
		return bad("redis-url", fmt.Errorf("want redis://host:port (rediss:// for TLS), got %q", redact.URL(u)))
	}
	if cfg.redisRequired = c.Bool("redis-required"); cfg.redisRequired && cfg.limits.RedisURL == "" {
		return bad("redis-required", errors.New("needs --redis-url"))
	}
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
	if c.Bool("require-auth") && !cfg.auth.HasKeys() {
		return bad("require-auth", errors.New("no key configured: set --jwt-hmac-secret-file, --jwt-key-file or --jwks-url (or their WSGATE_* variables)"))
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
		HMACSecretFiles: splitList(c.StringSlice("jwt-hmac-secret-file")),
		KeyFiles:        splitList(c.StringSlice("jwt-key-file")),
		JWKSURL:         c.String("jwks-url"),
		Algorithms:      splitList(c.StringSlice("jwt-algorithms")),
		Issuer:          c.String("jwt-issuer"),
		Audiences:       splitList(c.StringSlice("jwt-audience")),
		SubjectClaim:    c.String("jwt-subject-claim"),
		Leeway:          c.Duration("jwt-leeway"),
		QueryParam:      c.String("token-query-param"),
		Cookie:          c.String("token-cookie"),
		ForwardToken:    c.Bool("forward-token"),
		AllowAnonymous:  c.Bool("allow-anonymous"),
		// A rules file's tiers and claim keys read the claims, and a
		// reload may add them: keep them whenever there is a file.
		KeepClaims: c.String("rules-file") != "",
	}
	if q := cfg.auth.QueryParam; q == "" || url.QueryEscape(q) != q {
		return &flagError{"token-query-param", fmt.Errorf("%q: want a name that needs no escaping in a URL", q)}
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
	for _, o := range cfg.proxy.AllowedOrigins {
		if err := auth.CheckOriginPattern(o); err != nil {
			return &flagError{"allowed-origins", err}
		}
	}
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
// or GiB suffix (or B). KB, MB and GB (and K, M, G) are refused: people
// mean 1000 by them as often as 1024, and a limit should not depend on
// which.
func parseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	upper := strings.ToUpper(t)
	for _, u := range []struct {
		suffixes []string
		binary   string
		decimal  int64
	}{
		{[]string{"KB", "K"}, "KiB", 1e3},
		{[]string{"MB", "M"}, "MiB", 1e6},
		{[]string{"GB", "G"}, "GiB", 1e9},
	} {
		for _, suffix := range u.suffixes {
			num, ok := strings.CutSuffix(upper, suffix)
			if !ok {
				continue
			}
			num = strings.TrimSpace(num)
			if n, err := strconv.ParseInt(num, 10, 64); err == nil && n >= 0 && n <= (1<<62)/u.decimal {
				return 0, fmt.Errorf("%q is ambiguous (powers of 1000 or of 1024?): write %d%s or %d", s, n, u.binary, n*u.decimal)
			}
			return 0, fmt.Errorf("%q is ambiguous: write a number of bytes or one with KiB, MiB or GiB, like 1MiB", s)
		}
	}
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30}, {"B", 1}} {
		if num, ok := strings.CutSuffix(upper, u.suffix); ok {
			t, mult = strings.TrimSpace(num), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("want a size like 1048576 or 1MiB, got %q", s)
	}
	return n * mult, nil
}

// inheritFlags is the Before of check-config and demo: flags written before
// the subcommand (`wsgate --upstream ... check-config`) count as if written
// after it, where urfave/cli alone would drop them; written on both sides,
// the later one wins.
func inheritFlags(c *cli.Context) error {
	lineage := c.Lineage()
	if len(lineage) < 2 {
		return nil
	}
	parent := lineage[1]
	for _, f := range c.Command.Flags {
		name := f.Names()[0]
		if c.IsSet(name) || !parent.IsSet(name) {
			continue
		}
		values := []string{fmt.Sprint(parent.Value(name))}
		if _, ok := f.(*cli.StringSliceFlag); ok {
			values = parent.StringSlice(name)
		}
		for _, v := range values {
			if err := c.Set(name, v); err != nil {
				return cli.Exit(fmt.Sprintf("wsgate: --%s: %v", name, err), exitBadConfig)
			}
		}
	}
	return nil
}

// serviceLink matches the variables the kubelet derives from a Service named
// wsgate or wsgate-<something> when the pod's enableServiceLinks is true:
// they share the flags' WSGATE_ prefix but are no flag's.
var serviceLink = regexp.MustCompile(`^WSGATE(_[A-Z0-9_]+)?_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)$`)

// checkEnv refuses a WSGATE_* variable in environ that is no flag's: a
// typo (WSGATE_JWT_HMAC_SECRET for ..._FILE) would otherwise leave the
// gate running without what it was meant to set. Service links are
// returned, to be logged as ignored.
func checkEnv(environ []string, fs []cli.Flag) (serviceLinks []string, err error) {
	// The admin command's own variable: set in the gate's container, it
	// points `wsgate admin` run there at a non-default admin port.
	known := map[string]bool{env("admin-url")[0]: true}
	var names []string
	for _, f := range fs {
		if ev, ok := f.(interface{ GetEnvVars() []string }); ok {
			for _, e := range ev.GetEnvVars() {
				known[e] = true
				names = append(names, e)
			}
		}
	}
	var unknown []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case !strings.HasPrefix(name, "WSGATE_") || known[name]:
		case serviceLink.MatchString(name):
			serviceLinks = append(serviceLinks, name)
		default:
			unknown = append(unknown, name)
		}
	}
	if len(unknown) == 0 {
		return serviceLinks, nil
	}
	slices.Sort(unknown)
	msg := unknown[0] + " is no flag's variable"
	if s := suggest.Closest(unknown[0], names); s != "" {
		msg += " (did you mean " + s + "?)"
	} else {
		msg += "; wsgate --help lists each flag's"
	}
	if len(unknown) > 1 {
		msg += fmt.Sprintf("; %d more: %s", len(unknown)-1, strings.Join(unknown[1:], ", "))
	}
	return nil, errors.New(msg)
}

var (
	badFlagValue = regexp.MustCompile(`^invalid (?:boolean )?value ("(?:[^"\\]|\\.)*") for (?:flag )?-+([a-z0-9-]+): `)
	badEnvValue  = regexp.MustCompile(`^could not parse ("(?:[^"\\]|\\.)*") as .* from environment variable "([A-Z0-9_]+)" for flag ([a-z0-9-]+): `)
	unknownFlag  = regexp.MustCompile(`^flag provided but not defined: -+(.+)$`)
)

// explainUsage turns what urfave/cli and package flag say about a value they
// cannot parse into one line that names the flag (and the variable it came
// from) and says what to write; other errors are returned as they are.
func explainUsage(err error, fs []cli.Flag) string {
	msg := err.Error()
	var name, value, from string
	if m := badFlagValue.FindStringSubmatch(msg); m != nil {
		value, name = m[1], m[2]
	} else if m := badEnvValue.FindStringSubmatch(msg); m != nil {
		value, from, name = m[1], m[2], m[3]
	} else if m := unknownFlag.FindStringSubmatch(msg); m != nil {
		var names []string
		for _, f := range fs {
			names = append(names, f.Names()[0])
		}
		line := "--" + m[1] + ": no such flag"
		if s := suggest.Closest(m[1], names); s != "" {
			line += "; did you mean --" + s + "?"
		}
		return line
	} else {
		return msg
	}
	if v, err := strconv.Unquote(value); err == nil {
		value = v
	}
	i := slices.IndexFunc(fs, func(f cli.Flag) bool { return f.Names()[0] == name })
	if i < 0 {
		return msg
	}
	line := "--" + name
	if from != "" {
		line += " (from " + from + ")"
	}
	switch fs[i].(type) {
	case *cli.DurationFlag:
		line += fmt.Sprintf(": want a duration like 5s, 250ms or 1m30s, got %q", value)
		if _, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil {
			line += fmt.Sprintf("; did you mean %ss?", strings.TrimSpace(value))
		}
	case *cli.IntFlag:
		line += fmt.Sprintf(": want a whole number, got %q", value)
	case *cli.BoolFlag:
		line += fmt.Sprintf(": want true or false, got %q", value)
	default:
		return msg
	}
	return line
}
