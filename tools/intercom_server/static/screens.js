// The page's elements, and the banner and toast every module may show.

/** @param {string} id */
export function $(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`the page has no #${id}`);
  return element;
}

/** @param {string} id */
export const button = (id) => /** @type {HTMLButtonElement} */ ($(id));
/** @param {string} id */
export const input = (id) => /** @type {HTMLInputElement} */ ($(id));
/** @param {string} id */
export const image = (id) => /** @type {HTMLImageElement} */ ($(id));
/** @param {string} id */
export const video = (id) => /** @type {HTMLVideoElement} */ ($(id));

/** @param {string | null} text */
export function banner(text) {
  $("banner").textContent = text || "";
  $("banner").hidden = !text;
}

/** @type {ReturnType<typeof setTimeout> | undefined} */
let toastTimer;
/** @param {string} text */
export function toast(text) {
  $("toast").textContent = text;
  $("toast").hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { $("toast").hidden = true; }, 5000);
}

/** A blob URL holds its picture in memory until revoked: let go of the ones leaving the screen.
 * @param {HTMLElement} root */
export function releasePictures(root) {
  for (const img of root.querySelectorAll("img")) {
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  }
}
