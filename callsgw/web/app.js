/* callsgw web client.
 *
 * Speaks docs/PROTOCOL.md (signaling protocol v1) over one WebSocket and
 * keeps exactly one RTCPeerConnection per call. No build step, no external
 * resources: the gateway serves this file as it is.
 *
 * window.callsgw exposes the live objects for tests and debugging:
 *   { pc, ws, state, bounds, join(opts), leave(), toggleMute(), startScreenShare(opts),
 *     stopScreenShare(), renegotiate(), restartIce(), refreshSecurity() }
 *
 * Negotiation is one queue per call attempt (enqueue): the join answer, every
 * gateway offer and every own offer run in arrival order. The page is the
 * polite side: a gateway offer that finds its own offer outstanding rolls that
 * back, is answered, and the own offer goes out again. A step that fails is
 * rolled back and tried once more; a watchdog (watch) rejoins the call (leave,
 * then a fresh join with the same token, exponential backoff, capped) when the
 * negotiation still has not converged after bounds.negotiationStuckMs, and warns
 * (without rejoining) about unmuted participants whose audio does not arrive.
 *
 * Network trouble (docs/PROTOCOL.md "Restarting ICE"): an ICE connection that
 * fails, stays disconnected for bounds.iceDisconnectedMs, or a network change
 * (online / connection change events) restarts ICE: pc.restartIce() and an own
 * offer with new credentials through the queue. DTLS and SRTP carry on.
 */
'use strict';

(() => {
  // ---------------------------------------------------------------- constants

  const SUBPROTOCOL = 'callsgw.v1';
  const PC_CONFIG = { iceServers: [], bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' };
  /** The RTCPeerConnection configuration: TURN servers once a `joined` handed some (joined.turn),
   *  relay candidates only with a `relay=1` join link (for networks that allow nothing else). */
  function pcConfig() {
    return { ...PC_CONFIG, iceServers: state.turnServers || [],
             iceTransportPolicy: state.relayOnly ? 'relay' : 'all' };
  }
  const STATS_INTERVAL_MS = 2000;
  const SCREEN_VERDICT_TIMEOUT_MS = 2500;
  /** Screen share as simulcast (RFC 8853, docs/PROTOCOL.md "Simulcast screen share"): the gateway
   *  forwards each subscriber the layer its downlink carries. `l` is a quarter of the size and about
   *  150 kbit/s, so that two Opus streams and `l` fit in 300 kbit/s. VP8 as always. */
  const SCREEN_ENCODINGS = [
    { rid: 'h', maxBitrate: 2500000 },
    { rid: 'l', scaleResolutionDownBy: 4, maxBitrate: 150000 },
  ];
  const CALL_ID_RE = /^[A-Za-z0-9._-]{1,128}$/;

  // Self-recovery and stuck-media bounds (exposed as window.callsgw.bounds).
  const BOUNDS = Object.freeze({
    watchIntervalMs: 1000, // how often the watchdog looks
    negotiationStuckMs: 10000, // an offer unanswered, or a non-stable signaling state, this long: rejoin
    noAudioMs: 5000, // an unmuted participant's receiver without inbound packets this long: warn
    joinReplyMs: 15000, // `join` sent and no `joined` this long: give up on that attempt
    reofferMs: 3000, // after `glare`: offer again even if the gateway's offer never came
    rejoinBaseMs: 500, // first rejoin delay; doubles per attempt
    rejoinMaxDelayMs: 8000,
    rejoinMaxAttempts: 5,
    rejoinCloseWaitMs: 2000, // wait at most this long for the gateway to close the old session
    recoveryResetMs: 30000, // a rejoined call that stays healthy this long resets the attempt count
    iceDisconnectedMs: 3000, // ICE 'disconnected' this long: restart ICE
    iceRestartGapMs: 5000, // at most one automatic ICE restart per this long
  });

  // The security contract (README): the only suites and profiles allowed.
  const ALLOWED_DTLS_CIPHERS = [
    'TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256',
    'TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA',
  ];
  const ALLOWED_SRTP_PROFILES = ['AEAD_AES_128_GCM', 'AES128_CM_HMAC_SHA1_80'];
  const DTLS_VERSIONS = { FEFF: 'DTLS 1.0', FEFD: 'DTLS 1.2', FEFC: 'DTLS 1.3' };

  const CLOSE_TEXT = {
    1000: ['The call ended', 'The gateway closed the session normally.'],
    1001: ['The gateway is shutting down', 'It stopped taking calls. Try again in a moment.'],
    1005: ['Connection closed', 'The gateway closed the connection without a reason.'],
    1006: ['Connection lost', 'The connection to the gateway dropped. Check the network and the gateway address.'],
    1009: ['Message too big', 'The gateway refused a message that was larger than it allows.'],
    1011: ['Gateway error', 'The gateway hit an internal error.'],
    4000: ['Protocol violation', 'The gateway closed the session after repeated bad messages.'],
    4001: ['Invalid token', 'The token is malformed or its signature does not match this gateway.'],
    4002: ['Token expired', 'Ask for a new token and join again.'],
    4003: ['Not allowed', 'The token is for another call, or lacks a permission this join needs.'],
    4004: ['The call is full', 'It has reached its participant limit.'],
    4005: ['Too many calls', 'This gateway has reached its limit on concurrent calls.'],
    4006: ['Rate limited', 'Too many joins or messages from here. Wait a few seconds and try again.'],
    4007: ['Join timed out', 'The join did not reach the gateway in time.'],
    4008: ['Media negotiation refused', 'The gateway refused this browser\u2019s session description (SDP).'],
    4009: ['Joined from elsewhere', 'A newer join with the same identity replaced this session.'],
    4010: ['Media connection failed', 'ICE consent was lost or the DTLS handshake failed.'],
    4012: ['Cluster unavailable', 'The gateway cannot reach its cluster just now. Try again in a moment.'],
    1012: ['Reconnecting', 'The gateway node carrying this call moved it; reconnecting.'],
  };
  // Close codes after which joining again with the same token cannot work.
  const PERMANENT_CLOSE = new Set([4001, 4002, 4003, 4004, 4005, 4008, 4009]);
  const LEFT_REASONS = {
    left: 'left the call',
    disconnected: 'disconnected',
    ice_consent_lost: 'lost their connection',
    transport_failed: 'dropped (media connection failed)',
    replaced: 'rejoined',
  };

  // ------------------------------------------------------------------- state

  const state = {
    phase: 'idle', // idle | joining | joined
    linkJoin: null, // {call, name} of a join link waiting for its one click
    joined: false,
    relayOnly: false, // a relay=1 join link: media only through TURN (iceTransportPolicy 'relay')
    turnServers: null, // from joined.turn: [{urls, username, credential}] (a secret: never shown)
    call: null,
    participantId: null,
    name: null,
    participants: {}, // id -> {id, name, muted, sharing, speaking}; the others, not you
    sharing: false,
    muted: false,
    listenOnly: false,
    listenOnlyReason: null,
    canShareScreen: true,
    screenSharer: null, // participant id of whoever shares (you included)
    lastError: null, // last `error` message from the gateway (or a local failure)
    closeCode: null,
    closeReason: null,
    bye: null,
    byes: [], // every `bye` reason this page got, oldest first (at most 10; kept across rejoins)
    notice: null, // {title, detail, kind} shown on the join form
    mediaState: 'new', // RTCPeerConnection.connectionState
    gatewayMediaState: null, // `connection.state`
    offersSent: 0,
    offersReceived: 0,
    answersSent: 0,
    glareCount: 0,
    rollbacks: 0, // own offers or gateway offers rolled back (glare, failed steps)
    staleAnswers: 0, // gateway answers ignored: no own offer with that id outstanding
    stuck: null, // {kind, reason, since}: this page's negotiation could not converge (a rejoin follows)
    warnings: [], // [{kind: 'no_audio', participantId, name, since, text}]
    mediaFlow: 'none', // none (nobody to hear) | waiting | flowing | silent
    rejoins: 0, // rejoins made by self-recovery since the page loaded
    resumes: 0, // WebSockets that dropped and were resumed (docs/PROTOCOL.md "Resuming")
    iceRestarts: 0, // ICE restarts begun (docs/PROTOCOL.md "Restarting ICE")
    iceState: 'new', // RTCPeerConnection.iceConnectionState
    reconnecting: false, // the WebSocket dropped and a resume is under way
    recovery: null, // {reason, attempt, maxAttempts, status, nextAt, history}; status: waiting | joining | rejoined | gave_up
    demo: false,
    security: {
      signaling: null, // {version, cipher, proxied, subprotocol}
      browser: null, // from getStats(): transport + certificates
      gateway: null, // `connection.security`
      media: null, // packet counters from getStats()
      checks: {}, // name -> true | false | null (pending)
      verdict: 'pending', // pending | ok | warn (secure, but media stuck) | bad
      status: null, // the panel's one-line verdict
      updatedAt: null,
    },
  };

  let session = null; // the current call attempt (see newSession)
  let lastSession = null;

  // ----------------------------------------------------------------- helpers

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function svgIcon(name, cls = 'icon') {
    const ns = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('class', cls);
    svg.setAttribute('aria-hidden', 'true');
    const use = document.createElementNS(ns, 'use');
    use.setAttribute('href', '#i-' + name);
    svg.append(use);
    return svg;
  }

  function initials(name) {
    const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
    const letters = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : (parts[0] || '?').slice(0, 2);
    return letters.toUpperCase();
  }

  function hueOf(text) {
    let h = 0;
    for (const ch of String(text)) h = (h * 31 + ch.codePointAt(0)) % 360;
    return h;
  }

  function avatar(id, name) {
    const a = el('span', 'avatar', initials(name));
    a.style.setProperty('--hue', String(hueOf(id || name)));
    return a;
  }

  function randomWord(n) {
    const bytes = crypto.getRandomValues(new Uint8Array(n));
    return Array.from(bytes, (b) => 'abcdefghjkmnpqrstuvwxyz23456789'[b % 31]).join('');
  }

  function wsUrl() {
    return (location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + '/ws';
  }

  /** The claims of a JWT, without checking it (the gateway does that). */
  function decodeToken(token) {
    try {
      const part = token.split('.')[1];
      const b64 = part.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((part.length + 3) % 4);
      const json = new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
      const claims = JSON.parse(json);
      return claims && typeof claims === 'object' ? claims : null;
    } catch {
      return null;
    }
  }

  function normSrtp(name) {
    if (!name) return null;
    let n = String(name).toUpperCase().replace(/^SRTP_/, '');
    if (n === 'AES128_CM_SHA1_80') n = 'AES128_CM_HMAC_SHA1_80';
    if (n === 'AES128_CM_SHA1_32') n = 'AES128_CM_HMAC_SHA1_32';
    return n;
  }

  function sameFingerprint(a, b) {
    if (!a || !b) return null;
    const bare = (v) => String(v).trim().split(/\s+/).pop().toUpperCase();
    return bare(a) === bare(b);
  }

  function describeClose(code, reason) {
    const [title, detail] = CLOSE_TEXT[code] || ['Disconnected', 'The gateway closed the connection.'];
    const extra = reason && reason !== 'left' ? ` Gateway said: \u201c${reason}\u201d.` : '';
    return { title: `${title} (${code})`, detail: detail + extra };
  }

  function formatDuration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(s / 3600);
    const mm = String(Math.floor((s % 3600) / 60)).padStart(2, '0');
    const ss = String(s % 60).padStart(2, '0');
    return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
  }

  // ------------------------------------------------------------------ toasts

  function toast(text, kind = 'info', ms = 4500) {
    const box = $('toasts');
    const t = el('div', 'toast ' + kind, text);
    box.append(t);
    while (box.children.length > 4) box.firstElementChild.remove();
    setTimeout(() => {
      t.classList.add('leaving');
      setTimeout(() => t.remove(), 300);
    }, ms);
  }

  function setNotice(title, detail = '', kind = 'error') {
    state.notice = title ? { title, detail, kind } : null;
    const box = $('join-notice');
    if (!title) {
      box.hidden = true;
      return;
    }
    box.className = 'notice ' + kind;
    $('join-notice-title').textContent = title;
    $('join-notice-detail').textContent = detail;
    box.hidden = false;
  }

  function setBanner(text, buttonText = null, onClick = null) {
    const b = $('banner');
    if (!text) {
      b.hidden = true;
      return;
    }
    $('banner-text').textContent = text;
    const btn = $('banner-btn');
    btn.hidden = !buttonText;
    btn.textContent = buttonText || '';
    btn.onclick = onClick;
    b.hidden = false;
  }

  // ------------------------------------------------------------- the session

  function newSession(opts) {
    return {
      opts,
      joinArgs: null, // {...opts, call, name, token}: what a rejoin repeats
      pc: null,
      ws: null,
      mic: null, // MediaStream
      micTrack: null,
      screenStream: null,
      screenTrack: null,
      screenTx: null, // our sendonly video transceiver (kept and reused)
      fakeTimer: null,
      chain: Promise.resolve(), // serialises every SDP operation
      nextOfferId: 1,
      outstanding: null, // id of our offer waiting for its answer
      rolledBack: new Set(), // ids of our offers rolled back for a gateway offer (their `glare` may still come)
      reofferNeeded: false,
      reofferTimer: null,
      ownSince: null, // since when an own offer is wanted and not yet answered
      offerFailures: 0, // own offer steps that failed in a row
      unanswered: new Map(), // gateway offer id -> {m, at}: received, not answered yet
      answers: new Map(), // gateway offer id -> our answer, sent again if a resume re-sends the offer
      resume: null, // {credential, grace} from joined / resumed (a secret: never shown or logged)
      reconnecting: null, // {attempt, deadline} while a resume is under way
      early: [], // messages that overtook `joined` (handled right after it)
      joinApplied: false, // the gateway's answer to our join offer is set
      unstableSince: null, // since when signalingState is not 'stable'
      voiceEvidence: new Map(), // participant id -> since when the gateway shows it publishing voice
      rx: new Map(), // participant id -> {key, since, packets, changedAt}: its voice receivers' packets
      connectedAt: null, // when the RTCPeerConnection first reached 'connected'
      iceDisconnectedAt: null, // since when ICE is 'disconnected'
      lastIceRestart: 0, // when the last ICE restart began
      recovering: false,
      closedSeen: false, // the watchdog saw the WebSocket closed (before its close event)
      screenWaiters: [],
      audioEls: new Map(), // track id -> <audio>
      trackOwner: new Map(), // remote track id -> participant id (from the stream id)
      statsTimer: null,
      clockTimer: null,
      watchTimer: null,
      watching: false,
      meter: null,
      startedAt: Date.now(),
      joinedAt: null,
      joinedOnce: false,
      ended: false,
      resolveJoin: null,
      rejectJoin: null,
    };
  }

  function isStopped(t) {
    return !t || t.stopped === true || t.currentDirection === 'stopped' || t.direction === 'stopped';
  }

  function errText(err) {
    return String(err && err.message ? err.message : err);
  }

  function send(s, message) {
    if (s.ws && s.ws.readyState === WebSocket.OPEN) {
      s.ws.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  /** Run `fn` after every SDP operation queued before it. The steps handle
   * their own failures (roll back, retry, rejoin); anything else that throws is
   * reported here, and the watchdog sees whatever it left unconverged. */
  function enqueue(s, fn) {
    const run = s.chain.then(async () => {
      if (s.ended) return;
      try {
        await fn();
      } catch (err) {
        if (s.ended) return;
        const message = errText(err);
        console.warn('callsgw: negotiation step failed:', message);
        state.lastError = { code: 'local', message };
        toast('Media negotiation failed: ' + message, 'error');
      }
    });
    s.chain = run;
    return run;
  }

  /** Join a call. A join by hand ends any rejoin in progress. */
  function join(opts = {}) {
    if (session) return Promise.reject(new Error('already in a call; leave first'));
    if (state.recovery) {
      cancelRecovery();
      state.recovery = null;
    }
    state.stuck = null;
    return startJoin(opts);
  }

  async function startJoin(opts) {
    if (session) throw new Error('already in a call; leave first');
    const call = (opts.call ?? $('f-call').value ?? '').trim();
    const name = (opts.name ?? $('f-name').value ?? '').trim();
    const token = (opts.token ?? $('f-token').value ?? '').trim();
    if (!token) {
      setNotice('A token is needed to join', state.demo
        ? 'Use \u201cGet a demo token\u201d or paste a token.'
        : 'Paste the access token you were given, or use \u201cGet a demo token\u201d on a demo gateway.');
      $('f-token').classList.add('invalid');
      throw new Error('no token');
    }
    if (call && !CALL_ID_RE.test(call)) {
      setNotice('That call ID is not valid', 'Use 1 to 128 letters, digits, dots, dashes or underscores.');
      $('f-call').classList.add('invalid');
      throw new Error('bad call id');
    }
    const claims = decodeToken(token);
    const perms = claims && Array.isArray(claims.perm) ? claims.perm : null;

    const s = (session = lastSession = newSession(opts));
    s.joinArgs = { ...opts, call, name, token };
    Object.assign(state, {
      phase: 'joining', joined: false, call: call || (claims && claims.call) || null, participantId: null,
      name: name || (claims && claims.name) || null, participants: {}, sharing: false, muted: false,
      listenOnly: false, listenOnlyReason: null, canShareScreen: !perms || perms.includes('publish_screen'),
      screenSharer: null, lastError: null, closeCode: null, closeReason: null, bye: null,
      mediaState: 'new', gatewayMediaState: null, offersSent: 0, offersReceived: 0, answersSent: 0, glareCount: 0,
      rollbacks: 0, staleAnswers: 0, warnings: [], mediaFlow: 'none',
    });
    state.security = { signaling: null, browser: null, gateway: null, media: null, checks: {}, verdict: 'pending', status: null, updatedAt: null };
    setNotice(null);
    renderJoinButton();

    const joined = new Promise((resolve, reject) => {
      s.resolveJoin = resolve;
      s.rejectJoin = reject;
    });
    joined.catch(() => {}); // callers may ignore the result; failures are shown on the page

    try {
      // 1. the microphone (or listen-only)
      const wantsMic = opts.audio !== false;
      if (perms && !perms.includes('publish_voice')) {
        state.listenOnly = true;
        state.listenOnlyReason = 'Your token does not allow speaking, so you joined listen-only.';
      } else if (!wantsMic) {
        state.listenOnly = true;
        state.listenOnlyReason = 'You joined listen-only.';
      } else if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        state.listenOnly = true;
        state.listenOnlyReason = 'This browser gives no microphone access here, so you joined listen-only.';
      } else {
        try {
          s.mic = await navigator.mediaDevices.getUserMedia({ audio: true });
          s.micTrack = s.mic.getAudioTracks()[0] || null;
          if (!s.micTrack) throw new Error('no audio track');
          if (opts.muted === true) {
            // a rejoin keeps the mute: the microphone never goes live in between
            s.micTrack.enabled = false;
            state.muted = true;
          }
        } catch (err) {
          state.listenOnly = true;
          const why = err && err.name === 'NotAllowedError' ? 'microphone access was denied'
            : err && err.name === 'NotFoundError' ? 'no microphone was found'
              : 'the microphone could not be opened';
          state.listenOnlyReason = `You joined listen-only: ${why}.`;
        }
      }
      if (s.ended) {
        if (s.mic) s.mic.getTracks().forEach((t) => t.stop()); // left while the browser asked
        return joined;
      }

      // 2. one RTCPeerConnection: BUNDLE, rtcp-mux, no ICE servers (the gateway is ICE-lite)
      const pc = (s.pc = new RTCPeerConnection(pcConfig()));
      if (s.micTrack) pc.addTrack(s.micTrack, s.mic);
      else pc.addTransceiver('audio', { direction: 'recvonly' });
      pc.ontrack = (ev) => onTrack(s, ev);
      pc.onconnectionstatechange = () => onMediaState(s);
      pc.oniceconnectionstatechange = () => onIceState(s);

      try {
        await pc.setLocalDescription(await pc.createOffer());
      } catch (err) {
        fail(s, 'Could not start media', errText(err));
        return joined;
      }
      if (s.ended) return joined;

      // 3. signaling
      let ws;
      try {
        ws = s.ws = new WebSocket(wsUrl(), SUBPROTOCOL);
      } catch (err) {
        fail(s, 'Could not reach the gateway', errText(err));
        return joined;
      }
      ws.onopen = () => {
        const msg = { type: 'join', token, sdp: pc.localDescription.sdp };
        if (call) msg.call = call;
        if (name) msg.name = name;
        send(s, msg);
      };
      ws.onmessage = (ev) => onMessage(s, ev);
      ws.onclose = (ev) => onClose(s, ev);
      ws.onerror = () => {}; // a close event follows with the code
      s.watchTimer = setInterval(() => { watch(s); }, BOUNDS.watchIntervalMs);
      startMeter(s);
      renderAll();
    } catch (err) {
      // whatever broke, the attempt ends here (and a rejoin in progress goes on)
      fail(s, 'Could not start the call', errText(err));
    }
    return joined;
  }

  function fail(s, title, detail) {
    if (s.ended) return;
    const ws = s.ws;
    teardown(s);
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, 'failed');
    if (!(recoveryActive() && !s.joinedOnce)) setNotice(title, detail, 'error');
    if (!s.joinedOnce && s.rejectJoin) s.rejectJoin(new Error(title));
  }

  function leave() {
    const s = session;
    const rejoining = cancelRecovery();
    if (!s) {
      if (!rejoining) return false;
      setNotice('You left the call', state.call ? `Call \u201c${state.call}\u201d.` : '', 'info');
      renderAll();
      return true;
    }
    leaveSession(s);
    setNotice('You left the call', state.call ? `Call \u201c${state.call}\u201d.` : '', 'info');
    return true;
  }

  /** Send `leave` and end the session here; resolves once the gateway closed it (bounded). */
  function leaveSession(s) {
    send(s, { type: 'leave' });
    const ws = s.ws;
    teardown(s);
    if (!s.joinedOnce && s.rejectJoin) s.rejectJoin(new Error('left before joining'));
    return new Promise((resolve) => {
      if (!ws || ws.readyState === WebSocket.CLOSED) {
        resolve();
        return;
      }
      // the gateway closes with 1000 after `leave`; do not wait on it forever
      const timer = setTimeout(() => {
        if (ws.readyState <= WebSocket.OPEN) ws.close(1000, 'left');
        resolve();
      }, BOUNDS.rejoinCloseWaitMs);
      ws.addEventListener('close', () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });
  }

  function teardown(s) {
    if (s.ended) return;
    s.ended = true;
    clearInterval(s.statsTimer);
    clearInterval(s.clockTimer);
    clearInterval(s.watchTimer);
    clearInterval(s.fakeTimer);
    clearTimeout(s.reofferTimer);
    for (const w of s.screenWaiters.splice(0)) w({ ended: true });
    stopMeter(s);
    for (const track of [s.micTrack, s.screenTrack]) if (track) track.stop();
    if (s.mic) s.mic.getTracks().forEach((t) => t.stop());
    if (s.pc) {
      s.pc.ontrack = null;
      s.pc.onconnectionstatechange = null;
      s.pc.oniceconnectionstatechange = null;
      s.pc.close();
    }
    for (const a of s.audioEls.values()) {
      a.srcObject = null;
      a.remove();
    }
    s.audioEls.clear();
    const video = $('screen-video');
    video.srcObject = null;
    if (session === s) session = null;
    Object.assign(state, { phase: 'idle', joined: false, sharing: false, screenSharer: null, speakingSelf: false, warnings: [] });
    for (const p of Object.values(state.participants)) {
      p.speaking = false;
      p.noAudio = false;
    }
    setBanner(null);
    renderAll();
  }

  // ---------------------------------------------------------------- messages

  function onMessage(s, ev) {
    if (s.ended) return undefined;
    let m;
    try {
      m = JSON.parse(ev.data);
    } catch {
      return undefined;
    }
    if (!m || typeof m.type !== 'string') return undefined;
    if (!s.joinedOnce && !['joined', 'error', 'bye', 'pong'].includes(m.type)) {
      // The gateway sends `joined` first. Anything that overtook it is newer
      // than its participant list, so it is handled right after it.
      s.early.push(m);
      return undefined;
    }
    return dispatch(s, m);
  }

  function participantFrom(p, old) {
    return {
      id: p.id, name: p.name || p.id, muted: !!p.muted, sharing: !!p.sharing,
      speaking: old ? old.speaking : false, noAudio: old ? old.noAudio : false,
      unmutedAt: old ? old.unmutedAt : null,
    };
  }

  function dispatch(s, m) {
    switch (m.type) {
      case 'joined': return onJoined(s, m);
      case 'answer': return enqueue(s, () => onAnswer(s, m));
      case 'offer':
        state.offersReceived += 1;
        s.unanswered.set(m.id, { m, at: Date.now() });
        noteOfferedVoices(s, m.sdp);
        return enqueue(s, () => answerGatewayOffer(s, m));
      case 'participant_joined': {
        const p = m.participant || {};
        if (!p.id || p.id === state.participantId) return undefined;
        const known = state.participants[p.id];
        state.participants[p.id] = participantFrom(p, known);
        if (p.sharing) state.screenSharer = p.id;
        if (!known) toast(`${p.name || 'Someone'} joined`, 'info', 3000);
        return renderAll();
      }
      case 'participant_left': {
        const p = state.participants[m.participant_id];
        delete state.participants[m.participant_id];
        s.voiceEvidence.delete(m.participant_id);
        s.rx.delete(m.participant_id);
        state.warnings = state.warnings.filter((w) => w.participantId !== m.participant_id);
        if (state.screenSharer === m.participant_id) state.screenSharer = null;
        if (p) toast(`${p.name} ${LEFT_REASONS[m.reason] || 'left'}`, m.reason === 'left' || m.reason === 'replaced' ? 'info' : 'warn', 3500);
        return renderAll();
      }
      case 'mute': {
        const p = state.participants[m.participant_id];
        if (p) {
          if (p.muted && !m.muted) p.unmutedAt = Date.now(); // its audio gets a fresh grace period
          p.muted = !!m.muted;
          if (p.muted) {
            p.speaking = false;
            p.noAudio = false;
          }
        }
        return renderAll();
      }
      case 'screen': return onScreen(s, m);
      case 'speaking': {
        const id = m.participant_id;
        const p = state.participants[id];
        if (p) p.speaking = !!m.speaking;
        else if (id === state.participantId) state.speakingSelf = !!m.speaking;
        // somebody who speaks publishes voice: this page should receive it (watch)
        if (m.speaking && id && id !== state.participantId && !s.voiceEvidence.has(id)) s.voiceEvidence.set(id, Date.now());
        return renderPeople();
      }
      case 'connection': {
        state.gatewayMediaState = m.state || null;
        if (m.security) state.security.gateway = m.security;
        if (m.state === 'failed') toast('The gateway reports that the media connection failed' + (m.reason ? ` (${m.reason})` : ''), 'error');
        computeSecurity();
        return renderSecurity();
      }
      case 'error': return onError(s, m);
      case 'bye':
        state.bye = m.reason || 'bye';
        state.byes = [...state.byes, state.bye].slice(-10);
        if (m.reconnect === true) {
          // a cluster node asks us to reconnect (docs/PROTOCOL.md "Clusters"): close 1012 follows
          setBanner(m.reason === 'node_lost'
            ? 'The gateway node that held this call was lost; reconnecting\u2026'
            : 'The gateway node carrying this connection is stopping; reconnecting\u2026');
          return undefined;
        }
        setBanner(m.reason === 'shutdown'
          ? 'The gateway is shutting down. The call ends shortly.'
          : m.reason === 'replaced'
            ? 'You joined this call again from elsewhere; this page leaves it.'
            : `The gateway is ending this session (${m.reason || 'no reason given'}).`);
        return undefined;
      case 'pong':
        return undefined;
      default:
        return undefined;
    }
  }

  function onJoined(s, m) {
    if (s.joinedOnce) return;
    s.joinedOnce = true;
    s.resume = m.resume && typeof m.resume.credential === 'string' ? m.resume : null;
    s.joinedAt = Date.now();
    Object.assign(state, {
      phase: 'joined',
      joined: true,
      call: m.call,
      participantId: m.participant && m.participant.id,
      name: m.participant && m.participant.name,
    });
    state.participants = {};
    for (const p of m.participants || []) {
      if (!p || !p.id || p.id === state.participantId) continue;
      state.participants[p.id] = participantFrom(p, null);
      if (p.sharing) state.screenSharer = p.id;
    }
    state.security.signaling = m.tls
      ? { version: m.tls.version, cipher: m.tls.cipher, proxied: false, subprotocol: s.ws.protocol }
      : { version: null, cipher: null, proxied: true, subprotocol: s.ws.protocol };
    enqueue(s, async () => {
      try {
        await s.pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
        s.joinApplied = true;
      } catch (err) {
        if (!s.ended) startRecovery(s, `the gateway\u2019s answer to the join could not be applied (${errText(err)})`);
      }
    });
    if (m.turn && Array.isArray(m.turn.urls) && m.turn.urls.length) applyTurn(s, m.turn);
    s.statsTimer = setInterval(() => refreshSecurity(), STATS_INTERVAL_MS);
    s.clockTimer = setInterval(() => renderClock(), 1000);
    setTimeout(() => refreshSecurity(), 400);
    if (state.listenOnly) setBanner(state.listenOnlyReason);
    if (state.muted) send(s, { type: 'mute', muted: true });
    const r = state.recovery;
    if (r && r.status === 'joining') rejoined(r);
    if (s.resolveJoin) s.resolveJoin(true);
    // what overtook `joined`, in the order it came
    for (const e of s.early.splice(0)) {
      if (s.ended) break;
      dispatch(s, e);
    }
    renderAll();
  }

  /**
   * joined.turn: the operator's TURN servers and this session's short-lived credentials (TURN REST
   * API style; a secret: never shown or logged). The offer was made before they came, so its
   * gathering had no TURN server: from now on the connection may use them (an ICE restart after a
   * failure gathers relay candidates), and with `relay=1` ICE restarts at once to gather them.
   */
  function applyTurn(s, turn) {
    state.turnServers = [{ urls: turn.urls.map(String), username: String(turn.username),
                           credential: String(turn.credential) }];
    enqueue(s, async () => {
      if (s.ended || !s.pc) return;
      try {
        s.pc.setConfiguration(pcConfig());
      } catch (err) {
        console.warn(`callsgw: the TURN servers could not be used (${errText(err)})`);
        return;
      }
      if (state.relayOnly) restartIce(s, 'relay candidates from the TURN server', { force: true });
    });
  }

  // ------------------------------------------------------------- negotiation

  /** Roll back a half-done exchange where the signaling state allows it; true when stable after. */
  async function rollback(s) {
    const pc = s.pc;
    const before = pc.signalingState;
    if (before !== 'have-local-offer' && before !== 'have-remote-offer') return before === 'stable';
    try {
      await pc.setLocalDescription({ type: 'rollback' });
    } catch (err) {
      try {
        await pc.setRemoteDescription({ type: 'rollback' });
      } catch (err2) {
        console.warn(`callsgw: rollback from ${before} failed:`, errText(err2));
        return false;
      }
    }
    state.rollbacks += 1;
    return pc.signalingState === 'stable';
  }

  /** The m-sections of an SDP: mid -> {kind, port, dir, owner (msid stream = publisher id)}. */
  function sdpSections(sdp) {
    const out = new Map();
    if (!sdp) return out;
    for (const block of String(sdp).split(/\r?\nm=/).slice(1)) {
      const lines = block.split(/\r?\n/);
      const head = lines[0].split(' ');
      const section = { kind: head[0], port: Number(head[1]) || 0, dir: 'sendrecv', owner: null };
      let mid = null;
      for (const line of lines.slice(1)) {
        if (line.startsWith('a=mid:')) mid = line.slice(6).trim();
        else if (/^a=(sendonly|recvonly|sendrecv|inactive)$/.test(line)) section.dir = line.slice(2);
        else if (line.startsWith('a=msid:')) section.owner = line.slice(7).split(' ')[0];
      }
      if (mid !== null) out.set(mid, section);
    }
    return out;
  }

  /** A gateway offer that forwards somebody's voice is evidence that they publish it. */
  function noteOfferedVoices(s, sdp) {
    const now = Date.now();
    for (const sec of sdpSections(sdp).values()) {
      if (sec.kind !== 'audio' || !sec.port || !sec.owner || sec.owner === state.participantId) continue;
      if (sec.dir !== 'sendonly' && sec.dir !== 'sendrecv') continue;
      if (!s.voiceEvidence.has(sec.owner)) s.voiceEvidence.set(sec.owner, now);
    }
  }

  async function applyGatewayOffer(s, m) {
    const pc = s.pc;
    await pc.setRemoteDescription({ type: 'offer', sdp: m.sdp });
    if (s.ended) return false;
    const answer = await pc.createAnswer();
    if (s.ended) return false;
    await pc.setLocalDescription(answer);
    if (s.ended) return false;
    send(s, { type: 'answer', id: m.id, sdp: pc.localDescription.sdp });
    state.answersSent += 1;
    s.unanswered.delete(m.id);
    s.answers.set(m.id, pc.localDescription.sdp);
    while (s.answers.size > 8) s.answers.delete(s.answers.keys().next().value);
    return true;
  }

  async function answerGatewayOffer(s, m) {
    const pc = s.pc;
    if (!s.joinApplied) return; // the join itself failed: a rejoin is under way
    if (s.answers.has(m.id)) {
      // sent again after a resume: our answer was lost with the old socket
      s.unanswered.delete(m.id);
      send(s, { type: 'answer', id: m.id, sdp: s.answers.get(m.id) });
      return;
    }
    if (pc.signalingState === 'have-local-offer' && s.outstanding !== null) {
      // Our own offer crossed this one, and the gateway refuses ours (`glare`:
      // at most one offer per direction). We are the polite side: roll ours
      // back now, answer, and offer again after. Waiting for the `glare` first
      // would leave both offers hanging should it never come.
      s.rolledBack.add(s.outstanding);
      s.outstanding = null;
      s.reofferNeeded = true;
      if (!s.ownSince) s.ownSince = Date.now();
      await rollback(s);
    }
    let first;
    try {
      if (await applyGatewayOffer(s, m)) await afterAnswer(s);
      return;
    } catch (err) {
      first = err;
    }
    if (s.ended) return;
    // Roll back and try once more (a step may fail for a passing reason) ...
    console.warn(`callsgw: could not answer the gateway's offer ${m.id} (${errText(first)}); rolling back, trying again`);
    await rollback(s);
    try {
      if (await applyGatewayOffer(s, m)) await afterAnswer(s);
    } catch (err) {
      if (s.ended) return;
      // ... then give up on this session: the gateway holds its offer until
      // it is answered, so nothing else would ever reach this page.
      await rollback(s);
      startRecovery(s, `the gateway\u2019s offer ${m.id} could not be answered (${errText(err)})`);
    }
  }

  async function afterAnswer(s) {
    sweepRemoteMedia(s);
    renderStage();
    if (s.reofferNeeded && s.outstanding === null) await makeOffer(s);
  }

  async function onAnswer(s, m) {
    const pc = s.pc;
    if (m.id !== s.outstanding || pc.signalingState !== 'have-local-offer') {
      state.staleAnswers += 1; // not for the offer we wait on: nothing to apply
      return;
    }
    try {
      await pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
    } catch (err) {
      if (s.ended) return;
      // The gateway applied our offer but we cannot apply its answer: roll
      // ours back and offer again (its next answer describes the same state).
      s.outstanding = null;
      s.offerFailures += 1;
      await rollback(s);
      if (s.offerFailures >= 2) {
        startRecovery(s, `the gateway\u2019s answer to offer ${m.id} could not be applied (${errText(err)})`);
        return;
      }
      console.warn(`callsgw: could not apply the answer to offer ${m.id} (${errText(err)}); offering again`);
      await makeOffer(s);
      return;
    }
    s.outstanding = null;
    s.offerFailures = 0;
    sweepRemoteMedia(s);
    if (s.reofferNeeded) await makeOffer(s);
    else s.ownSince = null;
  }

  /** Send our own offer (inside the queue). */
  async function makeOffer(s) {
    const pc = s.pc;
    if (!s.ownSince) s.ownSince = Date.now();
    if (s.outstanding !== null || pc.signalingState !== 'stable' || !s.joinApplied) {
      s.reofferNeeded = true;
      return;
    }
    s.reofferNeeded = false;
    clearTimeout(s.reofferTimer);
    try {
      await pc.setLocalDescription(await pc.createOffer());
    } catch (err) {
      if (s.ended) return;
      s.offerFailures += 1;
      s.reofferNeeded = true;
      await rollback(s);
      if (s.offerFailures >= 2) {
        startRecovery(s, `this page could not make its own offer (${errText(err)})`);
        return;
      }
      console.warn('callsgw: could not make an offer; trying again:', errText(err));
      scheduleReoffer(s, 1000);
      return;
    }
    if (s.ended) return;
    const id = s.nextOfferId++;
    s.outstanding = id;
    state.offersSent += 1;
    send(s, { type: 'offer', id, sdp: pc.localDescription.sdp });
  }

  function scheduleReoffer(s, ms) {
    clearTimeout(s.reofferTimer);
    s.reofferTimer = setTimeout(() => { if (s.reofferNeeded && !s.ended) renegotiate(s); }, ms);
  }

  function renegotiate(s = session) {
    if (!s || !state.joined) return Promise.resolve(false);
    return enqueue(s, () => makeOffer(s)).then(() => true);
  }

  async function onGlare(s, m) {
    if (s.rolledBack.delete(m.id)) {
      state.glareCount += 1; // we already yielded to the gateway's offer
      return;
    }
    if (m.id !== s.outstanding) return;
    state.glareCount += 1;
    s.outstanding = null;
    s.reofferNeeded = true;
    await rollback(s);
    // The gateway's offer is still on its way; answering it offers again.
    // Should it never come, offer again anyway.
    scheduleReoffer(s, BOUNDS.reofferMs);
  }

  function onError(s, m) {
    state.lastError = { code: m.code, message: m.message, ref: m.ref ?? null, id: m.id ?? null };
    if (m.code === 'glare') {
      enqueue(s, () => onGlare(s, m));
      return;
    }
    if (m.ref === 'screen') {
      for (const w of s.screenWaiters.splice(0)) w({ error: m });
      return; // startScreenShare reports it
    }
    if (m.ref === 'offer' && (m.id === s.outstanding || s.rolledBack.has(m.id))) {
      enqueue(s, async () => {
        if (s.rolledBack.delete(m.id)) return; // already rolled back; offered again with the current state
        if (m.id !== s.outstanding) return;
        s.outstanding = null;
        await rollback(s);
        if (!s.reofferNeeded) s.ownSince = null; // refused: nothing more to wait for
        // not awaited: stopScreenShare queues its own offer after this step
        if (state.sharing && (m.code === 'forbidden' || m.code === 'bad_sdp')) stopScreenShare();
      });
    }
    const text = {
      rate_limited: 'Slow down: the gateway is limiting messages from this page.',
      forbidden: `Not allowed: ${m.message || 'your token lacks that permission'}.`,
      screen_busy: m.message || 'Somebody else is sharing the screen.',
    }[m.code] || `Gateway: ${m.message || m.code}`;
    toast(text, m.code === 'rate_limited' ? 'warn' : 'error');
  }

  function onClose(s, ev) {
    if (lastSession === s) {
      state.closeCode = ev.code;
      state.closeReason = ev.reason || null;
    }
    if (s.ended || s.reconnecting) return;
    if ((ev.code === 1006 || ev.code === 1012) && s.joinedOnce && s.resume && s.resume.grace > 0) {
      // no close frame: the connection died, not the session (docs/PROTOCOL.md "Resuming");
      // 1012: a cluster node asked us to reconnect (docs/PROTOCOL.md "Clusters")
      resumeSession(s);
      return;
    }
    const { title, detail } = describeClose(ev.code, ev.reason);
    const wasJoined = s.joinedOnce;
    teardown(s);
    if (!wasJoined && recoveryActive()) {
      // a rejoin attempt was refused: the recovery decides what follows
      if (s.rejectJoin) s.rejectJoin(new Error(title));
      return;
    }
    if (ev.code === 1000 && wasJoined) setNotice('The call ended', 'The gateway closed your session.', 'info');
    else setNotice(title, detail, ev.code === 1001 ? 'warn' : 'error');
    if (!wasJoined && s.rejectJoin) s.rejectJoin(new Error(title));
  }

  function onMediaState(s) {
    if (s.ended) return;
    const prev = state.mediaState;
    state.mediaState = s.pc.connectionState;
    if (state.mediaState === 'connected' && s.connectedAt === null) s.connectedAt = Date.now();
    if (state.mediaState === 'failed' && prev !== 'failed') toast('The media connection failed.', 'error');
    if (state.mediaState === 'connected') refreshSecurity();
    renderConnState();
  }

  // ------------------------------------------------------------- ICE restart

  /** ICE connection state changes: 'failed' restarts ICE at once, 'disconnected' after a while (watch). */
  function onIceState(s) {
    if (s.ended) return;
    const ice = s.pc.iceConnectionState;
    state.iceState = ice;
    if (ice === 'disconnected') {
      if (s.iceDisconnectedAt === null) s.iceDisconnectedAt = Date.now();
    } else {
      s.iceDisconnectedAt = null;
    }
    if (ice === 'failed') restartIce(s, 'the media connection failed');
  }

  /** Restart ICE (docs/PROTOCOL.md "Restarting ICE"): new credentials in our next offer; media carries on. */
  function restartIce(s, why, { force = false } = {}) {
    if (!s || s.ended || !s.joinApplied || !s.pc) return false;
    const now = Date.now();
    if (!force && now - s.lastIceRestart < BOUNDS.iceRestartGapMs) return false;
    s.lastIceRestart = now;
    s.iceDisconnectedAt = null;
    state.iceRestarts += 1;
    console.info(`callsgw: restarting ICE (${why})`);
    s.pc.restartIce(); // the next createOffer carries new ice-ufrag/ice-pwd, even after a rollback
    renegotiate(s);
    return true;
  }

  function onNetworkChange() {
    const s = session;
    if (s && state.joined && !s.ended) restartIce(s, 'the network changed');
  }
  window.addEventListener('online', onNetworkChange);
  if (navigator.connection && navigator.connection.addEventListener) {
    navigator.connection.addEventListener('change', onNetworkChange);
  }

  // ------------------------------------------------------------------ resume

  const RESUME_BACKOFF_MS = [0, 500, 1000, 2000, 4000];

  /** The WebSocket died without a close frame: re-attach on a new one; media goes on meanwhile. */
  function resumeSession(s) {
    s.reconnecting = { attempt: 0, deadline: Date.now() + s.resume.grace * 1000 };
    state.reconnecting = true;
    setBanner('The connection to the gateway dropped. Reconnecting\u2026', 'Leave', () => leave());
    renderAll();
    tryResume(s);
  }

  function tryResume(s) {
    const r = s.reconnecting;
    if (s.ended || !r) return;
    const delay = RESUME_BACKOFF_MS[Math.min(r.attempt, RESUME_BACKOFF_MS.length - 1)];
    if (Date.now() + delay >= r.deadline) {
      resumeFailed(s, 'the gateway could not be reached in time');
      return;
    }
    r.attempt += 1;
    setTimeout(() => {
      if (s.ended || s.reconnecting !== r) return;
      let ws;
      try {
        ws = new WebSocket(wsUrl(), SUBPROTOCOL);
      } catch {
        tryResume(s);
        return;
      }
      let settled = false;
      ws.onopen = () => ws.send(JSON.stringify({
        type: 'resume', participant_id: state.participantId, call: state.call, credential: s.resume.credential,
      }));
      ws.onmessage = (ev) => {
        let m = null;
        try { m = JSON.parse(ev.data); } catch { /* not JSON: ignored */ }
        if (settled || !m || m.type !== 'resumed') return;
        settled = true;
        s.ws = ws;
        ws.onmessage = (e) => onMessage(s, e);
        ws.onclose = (e) => onClose(s, e);
        onResumed(s, m);
      };
      ws.onclose = (ev) => {
        if (settled) return;
        settled = true;
        if (ev.code === 4011 || PERMANENT_CLOSE.has(ev.code)) resumeFailed(s, `the gateway refused to resume it (${ev.code})`);
        else tryResume(s);
      };
      ws.onerror = () => {};
    }, delay);
  }

  function onResumed(s, m) {
    s.reconnecting = null;
    state.reconnecting = false;
    state.resumes += 1;
    if (m.resume && typeof m.resume.credential === 'string') s.resume = m.resume;
    // the gateway's snapshot replaces whatever the old socket missed
    const old = state.participants;
    state.participants = {};
    state.screenSharer = m.sharing ? state.participantId : null;
    for (const p of m.participants || []) {
      if (!p || !p.id || p.id === state.participantId) continue;
      state.participants[p.id] = participantFrom(p, old[p.id]);
      if (p.sharing) state.screenSharer = p.id;
    }
    setBanner(state.listenOnly ? state.listenOnlyReason : null);
    toast('Reconnected to the gateway.', 'ok', 3000);
    if (s.outstanding !== null) {
      // our offer may have died with the old socket: take the gateway's answer, or offer again
      const answer = m.answer;
      if (answer && answer.id === s.outstanding) {
        enqueue(s, () => onAnswer(s, { type: 'answer', id: answer.id, sdp: answer.sdp }));
      } else {
        enqueue(s, async () => {
          if (s.outstanding === null) return;
          s.rolledBack.add(s.outstanding);
          s.outstanding = null;
          s.reofferNeeded = true;
          await rollback(s);
          await makeOffer(s);
        });
      }
    }
    renderAll();
  }

  function resumeFailed(s, why) {
    s.reconnecting = null;
    state.reconnecting = false;
    // join again with the token: a fresh join replaces whatever is left of the old session
    startRecovery(s, `the connection to the gateway dropped and ${why}`);
  }

  // ------------------------------------------------------------ self-recovery

  function recoveryActive() {
    const r = state.recovery;
    return !!r && (r.status === 'waiting' || r.status === 'joining');
  }

  /** Stop a rejoin that is waiting or under way; true when there was one. */
  function cancelRecovery() {
    if (!recoveryActive()) return false;
    state.recovery.status = 'cancelled';
    state.stuck = null;
    setBanner(null);
    return true;
  }

  /** This page's negotiation cannot converge: leave, then join again with the same token and options. */
  function startRecovery(s, reason) {
    if (s.ended || s.recovering) return;
    s.recovering = true;
    state.stuck = { kind: 'negotiation', reason, since: Date.now() };
    console.warn('callsgw: negotiation stuck:', reason);
    const args = { ...s.joinArgs, muted: state.muted };
    const wasSharing = state.sharing;
    const closed = leaveSession(s);
    scheduleRejoin(args, reason, closed);
    if (wasSharing) toast('Your screen share stopped with the rejoin. Share again once you are back.', 'warn', 8000);
  }

  function scheduleRejoin(args, reason, before = Promise.resolve()) {
    const prev = state.recovery && state.recovery.status !== 'gave_up' && state.recovery.status !== 'cancelled'
      ? state.recovery : null;
    const history = prev ? prev.history : [];
    const attempt = (prev ? prev.attempt : 0) + 1;
    if (attempt > BOUNDS.rejoinMaxAttempts) {
      giveUp(reason, history);
      return;
    }
    const delay = Math.min(BOUNDS.rejoinBaseMs * 2 ** (attempt - 1), BOUNDS.rejoinMaxDelayMs);
    const r = (state.recovery = {
      reason, attempt, maxAttempts: BOUNDS.rejoinMaxAttempts, status: 'waiting',
      nextAt: Date.now() + delay, rejoinedAt: null, history,
    });
    history.push({ attempt, reason, at: Date.now(), delayMs: delay, result: null });
    const what = `Media negotiation is stuck: ${reason}.`;
    setBanner(`${what} Rejoining the call in ${(delay / 1000).toFixed(1)} s (attempt ${attempt} of ${r.maxAttempts})\u2026`,
      'Leave', () => leave());
    toast(`${what} Rejoining the call.`, 'warn', 6000);
    renderAll();
    const wait = new Promise((resolve) => setTimeout(resolve, delay));
    Promise.all([before, wait]).then(() => {
      if (state.recovery === r && r.status === 'waiting' && !session) attemptRejoin(args, r);
    });
  }

  async function attemptRejoin(args, r) {
    r.status = 'joining';
    state.rejoins += 1;
    const entry = r.history[r.history.length - 1];
    setBanner(`Rejoining the call (attempt ${r.attempt} of ${r.maxAttempts})\u2026`, 'Leave', () => leave());
    renderAll();
    try {
      await startJoin(args);
      if (state.recovery === r) entry.result = 'joined';
    } catch (err) {
      if (state.recovery !== r || r.status !== 'joining') return; // left or joined by hand meanwhile
      entry.result = errText(err);
      if (PERMANENT_CLOSE.has(state.closeCode)) {
        giveUp(`${r.reason}; joining again was refused: ${errText(err)}`, r.history);
        return;
      }
      scheduleRejoin(args, r.reason);
    }
  }

  function rejoined(r) {
    r.status = 'rejoined';
    r.rejoinedAt = Date.now();
    state.stuck = null;
    setBanner(null);
    toast('Rejoined the call: media negotiation starts afresh.', 'ok', 4000);
  }

  function giveUp(reason, history) {
    const made = history.length;
    state.recovery = {
      reason, attempt: made, maxAttempts: BOUNDS.rejoinMaxAttempts, status: 'gave_up',
      nextAt: null, rejoinedAt: null, history,
    };
    setBanner(null);
    setNotice('The call could not be recovered',
      `Media negotiation got stuck (${reason}) and ${made} rejoin attempt${made === 1 ? '' : 's'} did not help. Join again to retry.`,
      'error');
    renderAll();
  }

  // ---------------------------------------------------------------- watchdog

  /** participant id -> {audio: [{mid, trackId}], video: [...]}: live receivers of what the gateway forwards. */
  function receivers(s) {
    const out = new Map();
    const pc = s.pc;
    if (!pc || !pc.remoteDescription) return out;
    const sections = sdpSections(pc.remoteDescription.sdp);
    for (const t of pc.getTransceivers()) {
      if (isStopped(t) || t.mid === null) continue;
      if (t.currentDirection !== 'recvonly' && t.currentDirection !== 'sendrecv') continue;
      const sec = sections.get(t.mid);
      if (!sec || !sec.port || (sec.dir !== 'sendonly' && sec.dir !== 'sendrecv')) continue;
      const track = t.receiver.track;
      if (track.readyState !== 'live') continue;
      const owner = sec.owner || s.trackOwner.get(track.id);
      if (!owner) continue;
      if (!out.has(owner)) out.set(owner, { audio: [], video: [] });
      const list = out.get(owner)[track.kind];
      if (list) list.push({ mid: t.mid, trackId: track.id });
    }
    return out;
  }

  /** Why this page's negotiation has not converged within the bound, or null. */
  function negotiationProblem(s, owners, now) {
    const bound = BOUNDS.negotiationStuckMs;
    const secs = (t) => Math.round((now - t) / 1000);
    if (!s.joinApplied && now - s.joinedAt > bound) return `the gateway\u2019s answer to the join was not applied after ${secs(s.joinedAt)} s`;
    for (const [id, o] of s.unanswered) {
      if (now - o.at > bound) return `the gateway\u2019s offer ${id} is still unanswered after ${secs(o.at)} s`;
    }
    if (s.ownSince !== null && now - s.ownSince > bound) return `this page\u2019s own offer got no answer in ${secs(s.ownSince)} s`;
    if (s.unstableSince !== null && now - s.unstableSince > bound) {
      return `the signaling state stayed ${s.pc.signalingState} for ${secs(s.unstableSince)} s`;
    }
    for (const [id, since] of s.voiceEvidence) {
      const p = state.participants[id];
      const rx = owners.get(id);
      if (p && rx && rx.audio.length) {
        s.voiceEvidence.delete(id);
        continue;
      }
      if (now - since > bound) {
        return p ? `${p.name} publishes voice, but this page has had no receiver for it for ${secs(since)} s`
          : `the gateway forwards or reports a participant (${id}) this page does not know, for ${secs(since)} s`;
      }
    }
    return null;
  }

  async function watch(s) {
    if (s.ended || s.watching || s.reconnecting) return;
    const now = Date.now();
    if (!s.joinedOnce) {
      // Chromium reports a refused connection's close event seconds late
      // (against port scans); the state says it at once.
      if (s.ws && s.ws.readyState === WebSocket.CLOSED) {
        if (s.closedSeen) onClose(s, { code: 1006, reason: '' });
        s.closedSeen = true;
        return;
      }
      if (now - s.startedAt > BOUNDS.joinReplyMs) {
        fail(s, 'The gateway did not answer the join', `No reply within ${BOUNDS.joinReplyMs / 1000} s.`);
      }
      return;
    }
    const pc = s.pc;
    if (s.iceDisconnectedAt !== null && now - s.iceDisconnectedAt > BOUNDS.iceDisconnectedMs) {
      restartIce(s, `the media connection was interrupted for ${Math.round((now - s.iceDisconnectedAt) / 1000)} s`);
    }
    if (pc.signalingState === 'stable') s.unstableSince = null;
    else if (s.unstableSince === null) s.unstableSince = now;
    const owners = receivers(s);
    const problem = negotiationProblem(s, owners, now);
    if (problem) {
      startRecovery(s, problem);
      return;
    }
    const r = state.recovery;
    if (r && r.status === 'rejoined' && now - r.rejoinedAt > BOUNDS.recoveryResetMs) state.recovery = null;
    s.watching = true;
    try {
      await updateMediaFlow(s, owners, now);
    } finally {
      s.watching = false;
    }
  }

  /** Per participant: do its voice receivers get packets? Warnings, never a rejoin. */
  async function updateMediaFlow(s, owners, now) {
    let report;
    try {
      report = await s.pc.getStats();
    } catch {
      return;
    }
    if (s.ended) return;
    const byMid = new Map();
    const byTrack = new Map();
    report.forEach((r) => {
      if (r.type !== 'inbound-rtp' || (r.kind || r.mediaType) !== 'audio') return;
      if (r.mid !== undefined && r.mid !== null) byMid.set(String(r.mid), r.packetsReceived || 0);
      if (r.trackIdentifier) byTrack.set(r.trackIdentifier, r.packetsReceived || 0);
    });
    const warnings = [];
    let expected = 0;
    let flowing = 0;
    let silent = 0;
    let changed = false;
    for (const p of Object.values(state.participants)) {
      const recv = owners.has(p.id) ? owners.get(p.id).audio : [];
      let noAudio = false;
      if (recv.length) {
        const key = recv.map((r) => r.mid).join(',');
        const packets = recv.reduce((n, r) => n + (byMid.get(r.mid) ?? byTrack.get(r.trackId) ?? 0), 0);
        let rx = s.rx.get(p.id);
        if (!rx || rx.key !== key) {
          rx = { key, since: now, packets, changedAt: packets > 0 ? now : null };
          s.rx.set(p.id, rx);
        } else if (packets > rx.packets) {
          rx.packets = packets;
          rx.changedAt = now;
        }
        if (!p.muted) {
          expected += 1;
          if (rx.changedAt !== null && now - rx.changedAt <= BOUNDS.noAudioMs) flowing += 1;
          const quietSince = Math.max(rx.since, rx.changedAt || 0, s.connectedAt ?? now, p.unmutedAt || 0);
          if (s.connectedAt !== null && now - quietSince > BOUNDS.noAudioMs) {
            noAudio = true;
            silent += 1;
            const secs = Math.round((now - quietSince) / 1000);
            warnings.push({
              kind: 'no_audio', participantId: p.id, name: p.name, since: quietSince,
              text: rx.changedAt === null ? `No audio received from ${p.name} (${secs} s)` : `No audio from ${p.name} for ${secs} s`,
            });
          }
        }
      } else {
        s.rx.delete(p.id);
      }
      if (noAudio && !p.noAudio) toast(`No audio is arriving from ${p.name}. The call goes on; their connection may be broken.`, 'warn', 6000);
      if (noAudio !== !!p.noAudio) changed = true;
      p.noAudio = noAudio;
    }
    state.warnings = warnings;
    state.mediaFlow = expected === 0 ? 'none' : flowing > 0 ? 'flowing' : silent === expected ? 'silent' : 'waiting';
    computeSecurity();
    renderSecurity();
    renderWarnings();
    if (changed) renderPeople();
  }

  // ------------------------------------------------------------ remote media

  function onTrack(s, ev) {
    const track = ev.track;
    const owner = ev.streams && ev.streams[0] ? ev.streams[0].id : null;
    s.trackOwner.set(track.id, owner);
    if (track.kind === 'audio') {
      const a = document.createElement('audio');
      a.autoplay = true;
      a.srcObject = new MediaStream([track]);
      if (owner) a.dataset.participant = owner;
      $('audio-sink').append(a);
      s.audioEls.set(track.id, a);
      a.play().catch(() => askToUnlockAudio());
    }
    track.addEventListener('ended', () => sweepRemoteMedia(s));
    renderStage();
  }

  /** Drop <audio> elements of tracks whose sections the gateway stopped. */
  function sweepRemoteMedia(s) {
    if (s.ended || !s.pc) return;
    const live = new Set();
    for (const t of s.pc.getTransceivers()) {
      const dir = t.currentDirection;
      if (!isStopped(t) && (dir === 'recvonly' || dir === 'sendrecv') && t.receiver.track.readyState === 'live') {
        live.add(t.receiver.track.id);
      }
    }
    for (const [id, a] of s.audioEls) {
      if (!live.has(id)) {
        a.srcObject = null;
        a.remove();
        s.audioEls.delete(id);
      }
    }
  }

  function liveRemoteVideo(s, owner) {
    if (!s || !s.pc) return null;
    let fallback = null;
    for (const t of s.pc.getTransceivers()) {
      const track = t.receiver.track;
      const dir = t.currentDirection;
      if (track.kind !== 'video' || isStopped(t) || track.readyState !== 'live') continue;
      if (dir !== 'recvonly' && dir !== 'sendrecv') continue;
      if (s.trackOwner.get(track.id) === owner) return track;
      fallback = track;
    }
    return fallback;
  }

  function askToUnlockAudio() {
    setBanner('Your browser blocked call audio until you interact with the page.', 'Enable sound', () => {
      const s = session;
      if (s) for (const a of s.audioEls.values()) a.play().catch(() => {});
      if (s && s.meter && s.meter.ctx.state === 'suspended') s.meter.ctx.resume().catch(() => {});
      setBanner(state.listenOnly ? state.listenOnlyReason : null);
    });
  }

  // ------------------------------------------------------------------- mute

  function toggleMute(force) {
    const s = session;
    if (!s || !state.joined) return state.muted;
    if (!s.micTrack) {
      toast(state.listenOnlyReason || 'You joined listen-only: there is no microphone to unmute.', 'warn');
      return state.muted;
    }
    const muted = typeof force === 'boolean' ? force : !state.muted;
    state.muted = muted;
    s.micTrack.enabled = !muted;
    send(s, { type: 'mute', muted });
    renderAll();
    return muted;
  }

  // ----------------------------------------------------------- screen share

  function fakeScreen(s) {
    const canvas = document.createElement('canvas');
    canvas.width = 1280;
    canvas.height = 720;
    const g = canvas.getContext('2d');
    const started = Date.now();
    const draw = () => {
      const t = (Date.now() - started) / 1000;
      const grad = g.createLinearGradient(0, 0, 1280, 720);
      grad.addColorStop(0, '#13233d');
      grad.addColorStop(1, '#0b0f14');
      g.fillStyle = grad;
      g.fillRect(0, 0, 1280, 720);
      g.fillStyle = '#5b9dff';
      g.fillRect(80, 110, 8, 120);
      g.fillStyle = '#e6edf3';
      g.font = '600 56px system-ui, sans-serif';
      g.fillText('Quarterly security review', 112, 160);
      g.fillStyle = '#8b98a7';
      g.font = '28px system-ui, sans-serif';
      g.fillText('Shared from the callsgw demo screen source', 112, 210);
      const bars = [0.55, 0.8, 0.42, 0.93, 0.67, 0.74];
      bars.forEach((v, i) => {
        const h = 300 * v * (0.9 + 0.1 * Math.sin(t * 2 + i));
        g.fillStyle = i % 2 ? '#3fb950' : '#5b9dff';
        g.fillRect(112 + i * 130, 640 - h, 84, h);
      });
      g.fillStyle = '#e6edf3';
      g.font = '24px ui-monospace, monospace';
      g.fillText(new Date().toLocaleTimeString(), 1040, 680);
    };
    draw();
    s.fakeTimer = setInterval(draw, 66);
    return canvas.captureStream(15);
  }

  /** Announce a screen state and wait for the gateway's verdict (its echo, an error, or a timeout). */
  function announceScreen(s, sharing) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        s.screenWaiters = s.screenWaiters.filter((w) => w !== done);
        resolve({ timeout: true });
      }, SCREEN_VERDICT_TIMEOUT_MS);
      const done = (verdict) => {
        clearTimeout(timer);
        resolve(verdict);
      };
      s.screenWaiters.push(done);
      if (!send(s, { type: 'screen', sharing })) done({ ended: true });
    });
  }

  function onScreen(s, m) {
    const mine = m.participant_id === state.participantId;
    if (mine) {
      for (const w of s.screenWaiters.splice(0)) w({ ok: true, sharing: !!m.sharing });
    } else {
      const p = state.participants[m.participant_id];
      if (p) p.sharing = !!m.sharing;
      if (m.sharing && p) toast(`${p.name} is presenting`, 'info', 3000);
    }
    if (m.sharing) state.screenSharer = m.participant_id;
    else if (state.screenSharer === m.participant_id) state.screenSharer = null;
    renderAll();
  }

  /** Share the screen (opts.fake: a moving canvas instead of getDisplayMedia), as simulcast
   *  (SCREEN_ENCODINGS) unless opts.simulcast === false. */
  async function startScreenShare(opts = {}) {
    const s = session;
    if (!s || !state.joined) throw new Error('join a call first');
    if (state.sharing || s.sharePending) return true;
    if (!state.canShareScreen) {
      toast('Your token does not allow screen sharing.', 'warn');
      return false;
    }
    const other = state.screenSharer && state.screenSharer !== state.participantId ? state.participants[state.screenSharer] : null;
    if (other) {
      toast(`${other.name} is already presenting. One screen at a time.`, 'warn');
      return false;
    }
    s.sharePending = true;
    renderControls();
    try {
      let stream;
      if (opts.fake) {
        stream = fakeScreen(s);
      } else if (!navigator.mediaDevices || !navigator.mediaDevices.getDisplayMedia) {
        toast('Screen sharing is not available in this browser.', 'warn');
        return false;
      } else {
        try {
          stream = await navigator.mediaDevices.getDisplayMedia({ video: true });
        } catch (err) {
          toast(err && err.name === 'NotAllowedError'
            ? 'Screen sharing was cancelled or not allowed.'
            : `Could not share the screen: ${err && err.message ? err.message : err}`, 'warn');
          return false;
        }
      }
      if (s.ended) {
        stream.getTracks().forEach((t) => t.stop());
        return false;
      }
      const track = stream.getVideoTracks()[0];
      const verdict = await announceScreen(s, true);
      if (verdict.error || verdict.ended || s.ended) {
        stream.getTracks().forEach((t) => t.stop());
        clearInterval(s.fakeTimer);
        if (verdict.error) {
          const e = verdict.error;
          toast(e.code === 'screen_busy' ? (e.message || 'Somebody else is sharing the screen.')
            : e.code === 'forbidden' ? 'Your token does not allow screen sharing.'
              : `Screen share refused: ${e.message || e.code}`, 'warn');
        }
        return false;
      }
      try { track.contentHint = 'detail'; } catch { /* optional */ }
      s.screenStream = stream;
      s.screenTrack = track;
      track.addEventListener('ended', () => { if (session === s && state.sharing) stopScreenShare(); });
      const simulcast = opts.simulcast !== false;
      await enqueue(s, async () => {
        if (!isStopped(s.screenTx)) {
          // a reused transceiver keeps the encodings it was created with (they can only be set by
          // addTransceiver): with simulcast ones and simulcast not wanted, `l` is switched off
          await s.screenTx.sender.replaceTrack(track);
          await setLayersActive(s.screenTx.sender, simulcast);
          s.screenTx.direction = 'sendonly';
        } else {
          const init = { direction: 'sendonly', streams: [stream] };
          if (simulcast) init.sendEncodings = SCREEN_ENCODINGS.map((e) => ({ ...e }));
          s.screenTx = s.pc.addTransceiver(track, init);
        }
        state.sharing = true;
        state.screenSharer = state.participantId;
        await makeOffer(s);
      });
      return state.sharing;
    } finally {
      s.sharePending = false;
      renderAll();
    }
  }

  /** On a simulcast sender, every layer active (simulcast) or only the first (`h`). */
  async function setLayersActive(sender, simulcast) {
    const params = sender.getParameters();
    if (!params.encodings || params.encodings.length < 2) return;
    let changed = false;
    params.encodings.forEach((e, i) => {
      const active = simulcast || i === 0;
      if (e.active !== active) { e.active = active; changed = true; }
    });
    if (changed) await sender.setParameters(params);
  }

  async function stopScreenShare() {
    const s = session;
    if (!s || !state.sharing) return false;
    state.sharing = false;
    if (state.screenSharer === state.participantId) state.screenSharer = null;
    clearInterval(s.fakeTimer);
    s.fakeTimer = null;
    if (s.screenTrack) s.screenTrack.stop();
    s.screenTrack = null;
    s.screenStream = null;
    renderAll();
    send(s, { type: 'screen', sharing: false });
    await enqueue(s, async () => {
      if (!isStopped(s.screenTx)) {
        await s.screenTx.sender.replaceTrack(null);
        s.screenTx.direction = 'inactive'; // keep the m-section; reuse it next time
      }
      await makeOffer(s);
    });
    return true;
  }

  // -------------------------------------------------------------- mic meter

  function startMeter(s) {
    if (!s.mic || !window.AudioContext) return;
    try {
      const ctx = new AudioContext();
      const source = ctx.createMediaStreamSource(s.mic);
      const analyser = ctx.createAnalyser();
      analyser.fftSize = 512;
      source.connect(analyser);
      const data = new Uint8Array(analyser.fftSize);
      const fill = $('meter-fill');
      let loud = 0;
      const meter = { ctx, running: true };
      const tick = () => {
        if (!meter.running) return;
        analyser.getByteTimeDomainData(data);
        let sum = 0;
        for (const v of data) sum += (v - 128) * (v - 128);
        const rms = Math.sqrt(sum / data.length) / 128;
        const level = state.muted ? 0 : Math.min(1, rms * 4);
        fill.style.setProperty('--level', level.toFixed(3));
        loud = level > 0.12 ? 8 : Math.max(0, loud - 1);
        const speaking = loud > 0;
        if (speaking !== !!state.speakingLocal) {
          state.speakingLocal = speaking;
          renderPeople();
        }
        meter.timer = setTimeout(tick, 60);
      };
      s.meter = meter;
      tick();
    } catch {
      s.meter = null;
    }
  }

  function stopMeter(s) {
    if (!s.meter) return;
    s.meter.running = false;
    clearTimeout(s.meter.timer);
    s.meter.ctx.close().catch(() => {});
    s.meter = null;
    state.speakingLocal = false;
    $('meter-fill').style.setProperty('--level', '0');
  }

  // ---------------------------------------------------------------- security

  async function refreshSecurity() {
    const s = session;
    if (!s || !s.pc || s.ended) return state.security;
    let report;
    try {
      report = await s.pc.getStats();
    } catch {
      return state.security;
    }
    if (s.ended) return state.security;
    let transport = null;
    const byId = new Map();
    const media = { audio: { sent: 0, received: 0, inbound: 0 }, video: { sent: 0, received: 0, inbound: 0, framesDecoded: 0 } };
    report.forEach((r) => {
      byId.set(r.id, r);
      if (r.type === 'transport' && (!transport || r.dtlsState === 'connected')) transport = r;
      const kind = r.kind || r.mediaType;
      if (r.type === 'outbound-rtp' && media[kind]) media[kind].sent += r.packetsSent || 0;
      if (r.type === 'inbound-rtp' && media[kind]) {
        media[kind].received += r.packetsReceived || 0;
        media[kind].inbound += 1;
        if (kind === 'video') media.video.framesDecoded += r.framesDecoded || 0;
      }
    });
    const cert = (id) => {
      const c = id ? byId.get(id) : null;
      return c ? { algorithm: c.fingerprintAlgorithm, fingerprint: c.fingerprint } : null;
    };
    if (transport) {
      const pair = transport.selectedCandidatePairId ? byId.get(transport.selectedCandidatePairId) : null;
      const local = pair ? byId.get(pair.localCandidateId) : null;
      const remote = pair ? byId.get(pair.remoteCandidateId) : null;
      const tlsVersion = transport.tlsVersion ? String(transport.tlsVersion).toUpperCase() : null;
      state.security.browser = {
        dtlsState: transport.dtlsState || null,
        iceState: transport.iceState || null,
        tlsVersion,
        dtlsVersion: tlsVersion ? DTLS_VERSIONS[tlsVersion] || `unknown (${tlsVersion})` : null,
        dtlsCipher: transport.dtlsCipher || null,
        srtpCipher: transport.srtpCipher || null,
        srtpProfile: normSrtp(transport.srtpCipher),
        dtlsRole: transport.dtlsRole || null,
        localCertificate: cert(transport.localCertificateId),
        remoteCertificate: cert(transport.remoteCertificateId),
        selectedPair: local && remote ? `${local.address || local.ip}:${local.port} \u2194 ${remote.address || remote.ip}:${remote.port} (${local.protocol || 'udp'})` : null,
        rttMs: pair && typeof pair.currentRoundTripTime === 'number' ? Math.round(pair.currentRoundTripTime * 1000) : null,
      };
    }
    state.security.media = media;
    state.security.updatedAt = Date.now();
    computeSecurity();
    renderSecurity();
    return state.security;
  }

  function computeSecurity() {
    const sec = state.security;
    const b = sec.browser || {};
    const gw = sec.gateway || null;
    const gd = gw && gw.dtls ? gw.dtls : null;
    const known = (v) => v !== null && v !== undefined && v !== '';
    const inSet = (v, set) => (known(v) ? set.includes(v) : null);
    const sig = sec.signaling;
    const checks = {
      signalingTls: !sig ? null : sig.proxied ? null
        : (sig.version === 'TLSv1.3' || sig.version === 'TLSv1.2') && /AES_?256/.test(sig.cipher || ''),
      dtlsVersion: known(b.tlsVersion) ? b.tlsVersion === 'FEFD' : null,
      dtlsCipher: inSet(b.dtlsCipher, ALLOWED_DTLS_CIPHERS),
      srtpProfile: inSet(b.srtpProfile, ALLOWED_SRTP_PROFILES),
      dtlsRole: known(b.dtlsRole) ? b.dtlsRole === 'client' : null,
      gatewayDtlsVersion: gd && known(gd.version) ? /1\.2/.test(gd.version) : null,
      gatewayCipher: gd ? inSet(gd.cipher_suite, ALLOWED_DTLS_CIPHERS) : null,
      gatewaySrtp: gw ? inSet(normSrtp(gw.srtp_profile || (gd && gd.srtp_profile)), ALLOWED_SRTP_PROFILES) : null,
      gatewayPinned: gd && typeof gd.fingerprint_matched === 'boolean' ? gd.fingerprint_matched : null,
      cipherAgrees: gd && known(b.dtlsCipher) ? gd.cipher_suite === b.dtlsCipher : null,
      srtpAgrees: gw && known(b.srtpProfile) ? normSrtp(gw.srtp_profile || (gd && gd.srtp_profile)) === b.srtpProfile : null,
      localFingerprintAgrees: gd && b.localCertificate ? sameFingerprint(b.localCertificate.fingerprint, gd.remote_fingerprint) : null,
      remoteFingerprintAgrees: gd && b.remoteCertificate ? sameFingerprint(b.remoteCertificate.fingerprint, gd.local_fingerprint) : null,
    };
    sec.checks = checks;
    const values = Object.entries(checks).filter(([k]) => k !== 'signalingTls').map(([, v]) => v);
    if (values.some((v) => v === false) || checks.signalingTls === false) sec.verdict = 'bad';
    else if (values.every((v) => v === true)) sec.verdict = 'ok';
    else sec.verdict = 'pending';
    sec.status = { ok: 'Verified', bad: 'Check failed' }[sec.verdict] || 'Negotiating\u2026';
    // Never "Verified" over silence: the keys are right, but media must also flow.
    if (sec.verdict !== 'bad' && (state.stuck || recoveryActive())) {
      sec.verdict = 'warn';
      sec.status = 'Negotiation stuck';
    } else if (sec.verdict === 'ok' && state.mediaFlow === 'silent') {
      sec.verdict = 'warn';
      sec.status = 'Connected, no audio received';
    } else if (sec.verdict === 'ok' && state.mediaFlow === 'waiting') {
      sec.verdict = 'pending';
      sec.status = 'Connected, no media yet';
    }
  }

  // ------------------------------------------------------------------ render

  function renderAll() {
    renderView();
    renderJoinButton();
    renderPeople();
    renderStage();
    renderControls();
    renderConnState();
    renderSecurity();
    renderWarnings();
    renderClock();
  }

  function renderView() {
    // a rejoin keeps the call on screen, with the banner saying what happens
    const inCall = state.phase === 'joined' || recoveryActive();
    $('join-view').hidden = inCall;
    $('call-view').hidden = !inCall;
    $('call-meta').hidden = !inCall;
    $('sec-pill').hidden = !inCall;
    document.body.classList.toggle('call-active', inCall);
    document.body.classList.toggle('rejoining', inCall && state.phase !== 'joined');
    $('call-title').textContent = state.call || '';
    document.title = inCall ? `${state.call} \u00b7 callsgw` : 'callsgw \u00b7 secure calls';
    if (inCall) {
      const origin = location.origin;
      const link = state.demo
        ? `${origin}/?demo=1&call=${encodeURIComponent(state.call)}`
        : `${origin}/?call=${encodeURIComponent(state.call)}`;
      $('invite-link').value = link;
      $('invite-label-text').textContent = state.demo ? 'Invite link (demo: anyone can join)' : 'Invite link (each person needs a token)';
    }
  }

  /** The stuck-media warning over the stage: unmuted participants whose audio does not arrive. */
  function renderWarnings() {
    const box = $('media-warning');
    const list = state.phase === 'joined' ? state.warnings.filter((w) => w.kind === 'no_audio') : [];
    if (!list.length) {
      box.hidden = true;
      return;
    }
    const names = list.map((w) => w.name);
    const who = names.length > 2 ? `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}` : names.join(' and ');
    $('media-warning-text').textContent = state.mediaFlow === 'silent'
      ? `No audio is arriving from ${who}. You are connected, but you may hear nobody.`
      : `No audio is arriving from ${who}. The call goes on; ${names.length > 1 ? 'their connections' : 'their connection'} may be broken.`;
    box.hidden = false;
  }

  function renderJoinButton() {
    const busy = state.phase === 'joining';
    const btn = $('join-btn');
    btn.disabled = busy;
    $('demo-btn').disabled = busy;
    const link = state.linkJoin;
    $('join-btn-text').textContent = busy ? 'Joining\u2026'
      : link ? `Join ${link.call} as ${link.name}`
        : state.demo && !$('f-token').value.trim() ? 'Join demo call' : 'Join call';
  }

  function renderClock() {
    const s = session;
    $('call-timer').textContent = s && s.joinedAt ? formatDuration(Date.now() - s.joinedAt) : '00:00';
  }

  function everyone() {
    const me = {
      id: state.participantId, name: state.name || 'You', muted: state.muted || state.listenOnly,
      sharing: state.sharing, speaking: !!(state.speakingLocal || state.speakingSelf) && !state.muted, self: true,
    };
    return [me, ...Object.values(state.participants)];
  }

  function badgesFor(p, { compact = false } = {}) {
    const out = [];
    if (p.noAudio && !p.self) {
      const b = el('span', 'badge no-audio');
      b.append(svgIcon('speaker'));
      b.append(document.createTextNode(compact ? 'no audio' : 'no audio received'));
      b.title = `No audio received from ${p.name}`;
      out.push(b);
    }
    if (p.sharing) {
      const b = el('span', 'badge sharing');
      b.append(svgIcon('screen'));
      if (!compact) b.append(document.createTextNode('Presenting'));
      b.title = 'Presenting';
      out.push(b);
    }
    if (p.muted) {
      const b = el('span', 'badge muted');
      b.append(svgIcon('mic-off'));
      b.title = p.self && state.listenOnly ? 'Listen-only' : 'Muted';
      out.push(b);
    } else {
      const mic = el('span', 'mic-state');
      mic.title = p.speaking ? 'Speaking' : 'Microphone on';
      const bars = el('span', 'bars');
      bars.append(el('i'), el('i'), el('i'));
      mic.append(svgIcon('mic'), bars);
      out.push(mic);
    }
    return out;
  }

  function renderPeople() {
    if (state.phase !== 'joined') return;
    const people = everyone();
    $('people-count').textContent = String(people.length);
    const list = $('people');
    list.replaceChildren(...people.map((p) => {
      const li = el('li', 'person' + (p.speaking ? ' speaking' : ''));
      li.dataset.participant = p.id || '';
      if (p.noAudio) li.dataset.noAudio = 'true';
      if (p.muted) li.dataset.muted = 'true';
      if (p.sharing) li.dataset.sharing = 'true';
      const name = el('span', 'person-name', p.name);
      li.append(avatar(p.id, p.name), name);
      const badges = el('span', 'person-badges');
      if (p.self) badges.append(el('span', 'badge you', 'You'));
      badges.append(...badgesFor(p, { compact: true }));
      li.append(badges);
      return li;
    }));
    const tiles = $('tiles');
    tiles.replaceChildren(...people.map((p) => {
      const t = el('div', 'tile' + (p.speaking ? ' speaking' : '') + (p.noAudio ? ' no-audio' : ''));
      t.dataset.participant = p.id || '';
      const badges = el('div', 'tile-badges');
      badges.append(...badgesFor(p, { compact: !!state.screenSharer }));
      t.append(avatar(p.id, p.name), el('div', 'tile-name', p.self ? `${p.name} (you)` : p.name), badges);
      return t;
    }));
  }

  function renderStage() {
    const s = session;
    const stage = $('stage');
    const sharer = state.screenSharer;
    const box = $('screen-stage');
    const video = $('screen-video');
    const waiting = $('screen-waiting');
    if (!s || !sharer || state.phase !== 'joined') {
      box.hidden = true;
      stage.classList.remove('sharing');
      if (video.srcObject) video.srcObject = null;
      return;
    }
    box.hidden = false;
    stage.classList.add('sharing');
    const mine = sharer === state.participantId;
    const p = mine ? null : state.participants[sharer];
    const who = mine ? 'You are presenting' : `${p ? p.name : 'Someone'} is presenting`;
    $('screen-caption-text').textContent = who;
    $('stop-share-btn').hidden = !mine;
    let track = null;
    if (mine) track = s.screenTrack;
    else track = liveRemoteVideo(s, sharer);
    const current = video.srcObject ? video.srcObject.getVideoTracks()[0] : null;
    if (track && current !== track) {
      video.srcObject = new MediaStream([track]);
      video.play().catch(() => {});
    } else if (!track && video.srcObject) {
      video.srcObject = null;
    }
    const hasFrames = !!track && video.videoWidth > 0;
    waiting.hidden = hasFrames;
    $('screen-waiting-text').textContent = mine ? 'Starting your screen share\u2026'
      : track ? `Waiting for video from ${p ? p.name : 'the presenter'}\u2026` : `Connecting to ${p ? p.name : 'the presenter'}\u2019s screen\u2026`;
  }

  function renderControls() {
    const s = session;
    const muteBtn = $('mute-btn');
    const listenOnly = state.listenOnly;
    muteBtn.setAttribute('aria-pressed', String(state.muted || listenOnly));
    muteBtn.disabled = listenOnly;
    $('mute-icon').setAttribute('href', state.muted || listenOnly ? '#i-mic-off' : '#i-mic');
    $('mute-text').textContent = listenOnly ? 'Listen-only' : state.muted ? 'Unmute' : 'Mute';
    muteBtn.title = listenOnly ? (state.listenOnlyReason || 'Listen-only') : state.muted ? 'Unmute your microphone' : 'Mute your microphone';
    const shareBtn = $('share-btn');
    const otherSharing = state.screenSharer && state.screenSharer !== state.participantId;
    shareBtn.setAttribute('aria-pressed', String(state.sharing));
    shareBtn.disabled = !state.canShareScreen || !!(s && s.sharePending) || (!!otherSharing && !state.sharing);
    $('share-icon').setAttribute('href', state.sharing ? '#i-screen-off' : '#i-screen');
    $('share-text').textContent = state.sharing ? 'Stop sharing' : 'Share screen';
    shareBtn.title = !state.canShareScreen ? 'Your token does not allow screen sharing'
      : otherSharing ? 'Somebody else is presenting' : state.sharing ? 'Stop sharing your screen' : 'Share your screen';
  }

  function renderConnState() {
    const node = $('conn-state');
    const st = state.mediaState;
    const text = {
      new: 'Connecting media\u2026', connecting: 'Connecting media\u2026', connected: 'Media connected',
      disconnected: 'Media interrupted\u2026', failed: 'Media failed', closed: 'Media closed',
    }[st] || st;
    node.textContent = text;
    node.className = 'conn-state' + (st === 'connected' ? ' ok' : st === 'failed' ? ' bad' : '');
  }

  function kvRow(dl, label, value, { check = null, fp = false, pendingText = 'waiting\u2026' } = {}) {
    const dt = el('dt', null, label);
    const dd = el('dd');
    const known = value !== null && value !== undefined && value !== '';
    if (!known) {
      dd.className = 'pending';
      dd.textContent = pendingText;
    } else {
      dd.className = (fp ? 'fp ' : '') + (check === true ? 'ok' : check === false ? 'bad' : '');
      if (check === true && !fp) dd.append(svgIcon('check'));
      dd.append(document.createTextNode(String(value)));
    }
    dd.dataset.check = check === null ? 'unknown' : String(check);
    dl.append(dt, dd);
  }

  function fpText(c) {
    return c && c.fingerprint ? `${c.algorithm || 'sha-256'} ${c.fingerprint}` : null;
  }

  function renderSecurity() {
    if (state.phase !== 'joined') {
      if (recoveryActive()) {
        $('sec-status').className = 'sec-status warn';
        $('sec-status').textContent = 'Rejoining\u2026';
        $('sec-pill').className = 'sec-pill warn';
        $('sec-pill-text').textContent = 'Rejoining\u2026';
      }
      return;
    }
    const sec = state.security;
    const c = sec.checks || {};
    const sig = sec.signaling;
    const b = sec.browser || {};
    const gw = sec.gateway || {};
    const gd = gw.dtls || {};

    const dlSig = $('sec-signaling');
    dlSig.replaceChildren();
    if (sig && sig.proxied) {
      kvRow(dlSig, 'TLS', 'TLS terminated by a proxy', { check: null });
    } else {
      kvRow(dlSig, 'TLS version', sig && sig.version, { check: c.signalingTls });
      kvRow(dlSig, 'Cipher', sig && sig.cipher, { check: c.signalingTls });
    }
    kvRow(dlSig, 'Subprotocol', sig && sig.subprotocol);

    const dlB = $('sec-browser');
    dlB.replaceChildren();
    kvRow(dlB, 'DTLS version', b.dtlsVersion, { check: c.dtlsVersion });
    kvRow(dlB, 'Cipher suite', b.dtlsCipher, { check: c.dtlsCipher });
    kvRow(dlB, 'SRTP profile', b.srtpProfile, { check: c.srtpProfile });
    kvRow(dlB, 'DTLS role', b.dtlsRole, { check: c.dtlsRole });
    kvRow(dlB, 'Your certificate', fpText(b.localCertificate), { check: c.localFingerprintAgrees, fp: true });
    kvRow(dlB, 'Gateway cert.', fpText(b.remoteCertificate), { check: c.remoteFingerprintAgrees, fp: true });
    kvRow(dlB, 'Path', b.selectedPair ? b.selectedPair + (b.rttMs !== null && b.rttMs !== undefined ? `, ${b.rttMs} ms` : '') : null,
      { pendingText: state.mediaState === 'connected' ? '\u2014' : 'connecting\u2026' });

    const dlG = $('sec-gateway');
    dlG.replaceChildren();
    const gwPending = { pendingText: state.gatewayMediaState === 'failed' ? 'failed' : 'waiting for the gateway\u2026' };
    kvRow(dlG, 'DTLS version', gd.version, { check: c.gatewayDtlsVersion, ...gwPending });
    kvRow(dlG, 'Cipher suite', gd.cipher_suite, { check: c.gatewayCipher && c.cipherAgrees !== false, ...gwPending });
    kvRow(dlG, 'SRTP profile', normSrtp(gw.srtp_profile || gd.srtp_profile), { check: c.gatewaySrtp && c.srtpAgrees !== false, ...gwPending });
    kvRow(dlG, 'Key exchange', gd.key_exchange_group, gwPending);
    kvRow(dlG, 'Gateway cert.', gd.local_fingerprint ? `sha-256 ${String(gd.local_fingerprint).split(/\s+/).pop()}` : null,
      { check: c.remoteFingerprintAgrees, fp: true, ...gwPending });
    kvRow(dlG, 'Your cert. seen', gd.remote_fingerprint ? `sha-256 ${String(gd.remote_fingerprint).split(/\s+/).pop()}` : null,
      { check: c.localFingerprintAgrees, fp: true, ...gwPending });
    kvRow(dlG, 'SDP pin', typeof gd.fingerprint_matched === 'boolean' ? (gd.fingerprint_matched ? 'matches the SDP fingerprint' : 'MISMATCH') : null,
      { check: c.gatewayPinned, ...gwPending });

    const status = $('sec-status');
    const pill = $('sec-pill');
    const pillText = $('sec-pill-text');
    status.className = 'sec-status ' + sec.verdict;
    pill.className = 'sec-pill' + (sec.verdict === 'pending' ? '' : ' ' + sec.verdict);
    status.textContent = sec.status || 'Negotiating\u2026';
    if (sec.verdict === 'ok') {
      pillText.textContent = `Encrypted \u00b7 ${b.dtlsVersion} \u00b7 ${b.srtpProfile}`;
    } else if (sec.verdict === 'bad') {
      pillText.textContent = 'Security check failed';
    } else if (sec.verdict === 'warn') {
      pillText.textContent = sec.status;
    } else {
      pillText.textContent = sec.status === 'Connected, no media yet' ? 'Encrypted \u00b7 waiting for media' : 'Securing\u2026';
    }
    const m = sec.media;
    const updated = sec.updatedAt ? new Date(sec.updatedAt).toLocaleTimeString() : null;
    $('sec-foot').textContent = (m ? `Audio packets sent ${m.audio.sent}, received ${m.audio.received}. ` : '')
      + (updated ? `Updated ${updated}, every 2 s.` : 'Refreshed every 2 s.');
  }

  // ------------------------------------------------------------- demo token

  async function fetchDemoToken() {
    const callInput = $('f-call');
    const nameInput = $('f-name');
    const call = callInput.value.trim() || demoCallId();
    const name = nameInput.value.trim() || guestName();
    if (!CALL_ID_RE.test(call)) {
      setNotice('That call ID is not valid', 'Use 1 to 128 letters, digits, dots, dashes or underscores.');
      callInput.classList.add('invalid');
      return null;
    }
    const btn = $('demo-btn');
    btn.disabled = true;
    try {
      const q = new URLSearchParams({ call, name });
      let res;
      try {
        res = await fetch('/demo/token?' + q.toString(), { cache: 'no-store' });
      } catch (err) {
        setNotice('Could not reach the gateway', String(err && err.message ? err.message : err));
        return null;
      }
      if (res.status === 404) {
        setNotice('Demo tokens are not available here',
          'This gateway is not running in demo mode. Paste a token from the operator (callsgw token), or start the gateway with callsgw serve --demo.',
          'warn');
        return null;
      }
      const text = (await res.text()).trim();
      if (!res.ok) {
        setNotice('The gateway refused a demo token', text || `HTTP ${res.status}`);
        return null;
      }
      callInput.value = call;
      nameInput.value = name;
      $('f-token').value = text;
      onTokenInput();
      setNotice(null);
      return text;
    } finally {
      btn.disabled = state.phase === 'joining';
    }
  }

  function guestName() {
    return `Guest ${100 + (crypto.getRandomValues(new Uint16Array(1))[0] % 900)}`;
  }

  function demoCallId() {
    // Shared by the tabs of this browser, so that two tabs of /?demo=1 meet.
    let id = null;
    try { id = localStorage.getItem('callsgw.demoCall'); } catch { /* storage disabled */ }
    if (!id || !CALL_ID_RE.test(id)) {
      id = `demo-${randomWord(6)}`;
      try { localStorage.setItem('callsgw.demoCall', id); } catch { /* storage disabled */ }
    }
    return id;
  }

  // ---------------------------------------------------------------- the form

  function onTokenInput() {
    const token = $('f-token').value.trim();
    $('f-token').classList.remove('invalid');
    const aside = $('token-aside');
    const claims = token ? decodeToken(token) : null;
    if (!token) {
      aside.textContent = '';
      aside.className = 'field-aside';
    } else if (!claims) {
      aside.textContent = 'not a token the page can read';
      aside.className = 'field-aside bad';
    } else {
      const parts = [];
      if (claims.call) parts.push(`call ${claims.call}`);
      if (typeof claims.exp === 'number') {
        const left = claims.exp * 1000 - Date.now();
        parts.push(left <= 0 ? 'expired' : left < 3600e3 ? `expires in ${Math.ceil(left / 60e3)} min` : `expires in ${Math.round(left / 3600e3)} h`);
      }
      aside.textContent = parts.join(' \u00b7 ');
      aside.className = 'field-aside ' + (typeof claims.exp === 'number' && claims.exp * 1000 <= Date.now() ? 'bad' : 'ok');
      if (claims.call && !$('f-call').value.trim()) $('f-call').value = claims.call;
      if (claims.name && !$('f-name').value.trim()) $('f-name').value = claims.name;
    }
    renderJoinButton();
  }

  async function onSubmit(ev) {
    ev.preventDefault();
    if (session) return;
    if (state.demo && !$('f-token').value.trim()) {
      const token = await fetchDemoToken();
      if (!token) return;
    }
    join({}).catch(() => {}); // failures are shown on the page
  }

  /**
   * A join link: `#call=...&name=...&token=...` (the fragment never reaches a server or a proxy;
   * `callsgw token --link` makes them). The older `?call=&name=&token=` form still works.
   * Everything is taken out of the address bar at once, and nothing joins before one click.
   */
  function readJoinLink() {
    const q = new URLSearchParams(location.search);
    const f = new URLSearchParams(location.hash.replace(/^#/, ''));
    const pick = (key) => f.get(key) || q.get(key);
    const link = { call: pick('call'), name: pick('name'), token: pick('token'), demo: q.get('demo'),
                   relay: pick('relay') };
    if (location.hash || q.has('token')) {
      q.delete('token');
      const rest = q.toString();
      history.replaceState(null, '', location.pathname + (rest ? '?' + rest : ''));
    }
    return link;
  }

  function init() {
    const { call, name, token, demo, relay } = readJoinLink();
    state.demo = demo === '1' || demo === 'true';
    state.relayOnly = relay === '1'; // iceTransportPolicy 'relay': media only through the TURN server
    if (call) $('f-call').value = call;
    if (name) $('f-name').value = name;
    if (token) $('f-token').value = token;
    if (state.demo) {
      if (!call) $('f-call').value = demoCallId();
      if (!name) $('f-name').value = guestName();
    }

    $('join-form').addEventListener('submit', onSubmit);
    $('demo-btn').addEventListener('click', () => { fetchDemoToken(); });
    $('f-token').addEventListener('input', onTokenInput);
    for (const id of ['f-call', 'f-name', 'f-token']) {
      $(id).addEventListener('input', () => {
        $(id).classList.remove('invalid');
        if (state.linkJoin) { state.linkJoin = null; renderJoinButton(); } // edited: no longer the link's call
      });
    }
    $('mute-btn').addEventListener('click', () => toggleMute());
    $('share-btn').addEventListener('click', () => {
      (state.sharing ? stopScreenShare() : startScreenShare()).catch((err) => toast(String(err.message || err), 'error'));
    });
    $('stop-share-btn').addEventListener('click', () => { stopScreenShare(); });
    $('leave-btn').addEventListener('click', () => leave());
    $('sec-pill').addEventListener('click', () => $('security-panel').scrollIntoView({ behavior: 'smooth', block: 'start' }));
    $('copy-invite').addEventListener('click', async () => {
      const input = $('invite-link');
      try {
        await navigator.clipboard.writeText(input.value);
        toast('Invite link copied', 'ok', 2000);
      } catch {
        input.select();
        toast('Press Ctrl+C to copy the link', 'info', 2500);
      }
    });
    $('screen-video').addEventListener('resize', renderStage);
    $('screen-video').addEventListener('loadeddata', renderStage);
    window.addEventListener('beforeunload', () => { if (session) send(session, { type: 'leave' }); });

    onTokenInput();
    renderAll();
    if (call && name && token) {
      // A link never joins by itself: a link with someone else's token must not put whoever
      // opens it into that call with a live microphone. One click, once per page load.
      state.linkJoin = { call, name };
      renderJoinButton();
      $('join-btn').focus();
      document.documentElement.dataset.linkJoin = 'ready';
    }
  }

  // ------------------------------------------------------------------ export

  window.callsgw = Object.freeze({
    get pc() { return session ? session.pc : null; },
    get ws() { return session ? session.ws : null; },
    state,
    bounds: BOUNDS,
    join,
    leave,
    toggleMute,
    startScreenShare,
    stopScreenShare,
    renegotiate: () => renegotiate(),
    restartIce: () => restartIce(session, 'asked', { force: true }),
    refreshSecurity,
  });

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
