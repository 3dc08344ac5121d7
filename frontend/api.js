// The page's only way to the server: the notebookos REST API under {base_url}api/notebookos/.
//
// Requests carry the login cookie; changing ones also carry the `X-XSRFToken` header from the `_xsrf` cookie,
// which Jupyter Server requires of every cookie-authenticated request that is not a GET. Errors become ApiError
// with the API's own message (`{"message", "reason"}`), which the page shows as is.

export class ApiError extends Error {
  /**
   * @param {number} status HTTP status (0 when the server could not be reached)
   * @param {string} message what the API said, or what went wrong on the way
   */
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

/** The `_xsrf` cookie's value, or null when the server set none. */
export function xsrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : null;
}

export class Api {
  /** @param {string} baseUrl the Jupyter server's base URL, ending in "/" */
  constructor(baseUrl) {
    this.root = `${baseUrl}api/notebookos/`;
  }

  /** Absolute URL of an API path with query parameters (empty ones left out). */
  url(path, params = {}) {
    const url = new URL(this.root + path, window.location.origin);
    for (const [key, value] of Object.entries(params)) {
      if (value !== null && value !== undefined && value !== "") url.searchParams.set(key, String(value));
    }
    return url.toString();
  }

  get(path, params) {
    return this.request("GET", path, undefined, params);
  }

  post(path, body) {
    return this.request("POST", path, body);
  }

  patch(path, body) {
    return this.request("PATCH", path, body);
  }

  delete(path) {
    return this.request("DELETE", path);
  }

  /**
   * One request; resolves to the decoded JSON body (null for an empty one), rejects with ApiError.
   * @param {string} method
   * @param {string} path relative to api/notebookos/
   * @param {unknown} [body] sent as JSON
   * @param {Record<string, unknown>} [params] query parameters
   */
  async request(method, path, body, params) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") {
      const token = xsrfToken();
      if (token) headers["X-XSRFToken"] = token;
    }
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(this.url(path, params), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
        cache: "no-store",
      });
    } catch (err) {
      throw new ApiError(0, `The Jupyter server cannot be reached (${err instanceof Error ? err.message : err}).`);
    }
    const raw = await response.text();
    let data = null;
    if (raw) {
      try {
        data = JSON.parse(raw);
      } catch {
        data = null;
      }
    }
    if (!response.ok) {
      const said = data && typeof data.message === "string" && data.message ? data.message : null;
      throw new ApiError(response.status, said || `${method} ${path}: HTTP ${response.status} ${response.statusText}`);
    }
    return data;
  }
}
