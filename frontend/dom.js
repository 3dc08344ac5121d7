// Building DOM without a framework: one element factory, and a re-render that keeps keyboard focus.
//
// Views rebuild their section from the latest models on every update. Without care that would drop the focus of a
// keyboard user whenever an event arrives; `render` remembers the focused element's `data-focus-key` and focuses
// the element with the same key in the new content.

/**
 * Create an element. `attrs` values: strings (attributes), booleans (present or not), functions for `on*` keys
 * (event listeners), `dataset` (an object), `text` (textContent). Children may be nodes, strings, or null/false
 * (skipped), or arrays of those.
 * @param {string} tag
 * @param {Record<string, any>} [attrs]
 * @param {...any} children
 * @returns {HTMLElement}
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "dataset") {
      for (const [k, v] of Object.entries(value)) {
        if (v !== null && v !== undefined) el.dataset[k] = String(v);
      }
    } else if (key === "text") {
      el.textContent = String(value);
    } else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/**
 * Replace a container's children, keeping focus on the element with the same `data-focus-key` if focus was inside.
 * @param {HTMLElement} container
 * @param {Array<Node|string|null>} nodes
 */
export function render(container, nodes) {
  const active = document.activeElement;
  const key = active && container.contains(active) ? active.getAttribute("data-focus-key") : null;
  container.replaceChildren();
  append(container, nodes);
  if (key) {
    const again = container.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
    if (again instanceof HTMLElement) again.focus({ preventScroll: true });
  }
}
