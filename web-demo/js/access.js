// Join tokens on the page: where the page finds one, and what it says when the server refuses a join.
// Pure (no DOM, no globals), so Node tests cover it (tests/js/access.test.mjs).
//
// A join token is a secret: it travels only to the server (signaling.js hands it to the transports). Nothing
// here or in the page puts it into the DOM, the page state or the console.

/** The error codes of a join refused for its token (docs/protocol.md); both come with close 4503. */
const AUTH_CODES = new Set(['unauthorized', 'token-expired']);

/** The close code of a join refused for its token. */
export const UNAUTHORIZED_CLOSE = 4503;

/**
 * The join token in the page's address: `token=` in the fragment (never sent to any server with the page
 * request) or else in the query; null when absent or empty.
 * @param {string} search location.search
 * @param {string} hash location.hash
 */
export function joinTokenFrom(search, hash) {
  const token = new URLSearchParams(hash.replace(/^#/, '')).get('token')
    ?? new URLSearchParams(search).get('token');
  return token ? token : null;
}

/** Whether a server `error` code means the join token was missing, wrong or expired. */
export function isAuthRefusal(code) {
  return AUTH_CODES.has(code);
}

/** `text` with every occurrence of `secret` replaced, in case a server ever echoed it. */
export function redact(text, secret) {
  const s = String(text ?? '');
  return secret ? s.split(secret).join('…') : s;
}

/**
 * The notice a refused join shows: says what happened, what to do, and that the page will not retry.
 * @param {{code: string, message?: string, hadToken: boolean, token?: string | null}} refusal token only to
 *   keep it out of the text
 */
export function refusalNotice({ code, message = '', hadToken, token = null }) {
  const detail = redact(message, token);
  const why = detail ? ` (${code}: ${detail})` : ` (${code})`;
  let text;
  if (code === 'token-expired') {
    text = `This page's invitation has expired${why}. Ask for a new invitation link.`;
  } else if (!hadToken) {
    text = `This server only lets in pages opened from an invitation link (a link with a join token); this `
      + `address has none${why}. Open the link you were given.`;
  } else {
    text = `The server refused this page's invitation${why}. Ask for a new invitation link for this room.`;
  }
  return `${text} Not retrying.`;
}
