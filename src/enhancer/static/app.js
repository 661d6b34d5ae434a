/* enhancer web page: pick or drop an image, send it to POST /upscale (at its size, or enlarged
 * 2x or 4x), compare, download.
 * Plain JavaScript, no build step, no external requests: everything talks to this origin. */
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };
  var els = {
    form: $("enhance-form"), dropzone: $("dropzone"), input: $("file-input"),
    fileInfo: $("file-info"), thumb: $("thumb"), fileName: $("file-name"), fileDetails: $("file-details"),
    format: $("format"), qualityField: $("quality-field"), quality: $("quality"), qualityValue: $("quality-value"),
    strength: $("strength"), strengthHint: $("strength-hint"), scale: $("scale"), scaleHint: $("scale-hint"),
    enlargeChoice: $("enlarge-choice"), tagBefore: $("tag-before"),
    enhance: $("enhance-btn"), cancel: $("cancel-btn"),
    progress: $("progress"), progressBar: $("progress-bar"), progressLabel: $("progress-label"), progressExtra: $("progress-extra"),
    status: $("status"), error: $("error"), errorTitle: $("error-title"), errorMessage: $("error-message"),
    result: $("result"), resultTitle: $("result-title"), resultSummary: $("result-summary"),
    resultNote: $("result-note"), resultNoteText: $("result-note-text"), answerLink: $("answer-link"), tagAfter: $("tag-after"),
    download: $("download"), downloadName: $("download-name"),
    compare: $("compare"), viewport: $("viewport"), stage: $("stage"),
    before: $("img-before"), after: $("img-after"), divider: $("divider"), split: $("split"),
    keyForm: $("key-form"), keyInput: $("api-key"), keyBtn: $("key-btn"), keyError: $("key-error"),
    forgetKey: $("forget-key")
  };

  var FORMAT_LABEL = { png: "PNG", jpeg: "JPEG", webp: "WebP" };
  var ERROR_TITLE = {
    400: "This image could not be read",
    401: "An API key is needed",
    404: "The enhance service was not found",
    408: "The upload took too long",
    413: "This image is too large",
    415: "This file type is not supported",
    422: "The request was not accepted",
    429: "Too many requests",
    500: "The server failed to enhance this image",
    502: "The server is unreachable",
    503: "The server is busy",
    504: "The server took too long"
  };

  var state = {
    file: null, originalURL: null, originalSize: null,
    resultURL: null, xhr: null, timer: null,
    zoom: "fit", scale: 1, natural: null, split: 50, afterWord: "enhanced",
    /* the answer's size over the input's (the scale asked), and how the original is enlarged to it */
    resultScale: 1, beforeMode: "smooth"
  };

  function setPageState(s) { document.body.setAttribute("data-state", s); }
  setPageState("idle");

  /* ---------- small helpers ---------- */

  function formatBytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(n < 10240 ? 1 : 0) + " KB";
    return (n / (1024 * 1024)).toFixed(1) + " MB";
  }

  function formatSeconds(ms) { return (ms / 1000).toFixed(ms < 10000 ? 1 : 0) + " s"; }

  function announce(text) { els.status.textContent = text; }

  function stemOf(name) {
    var base = (name || "image").replace(/^.*[\\/]/, "");
    var dot = base.lastIndexOf(".");
    return (dot > 0 ? base.slice(0, dot) : base) || "image";
  }

  /* filename from Content-Disposition: prefers RFC 5987 filename*=, then filename= */
  function filenameFromDisposition(header) {
    if (!header) return null;
    var star = /filename\*\s*=\s*(?:UTF-8|utf-8)''([^;]+)/.exec(header);
    if (star) {
      try { return sanitizeName(decodeURIComponent(star[1].trim().replace(/^"|"$/g, ""))); } catch (e) { /* fall through */ }
    }
    var quoted = /filename\s*=\s*"((?:[^"\\]|\\.)*)"/.exec(header);
    if (quoted) return sanitizeName(quoted[1].replace(/\\(.)/g, "$1"));
    var bare = /filename\s*=\s*([^;\s]+)/.exec(header);
    return bare ? sanitizeName(bare[1]) : null;
  }

  function sanitizeName(name) {
    name = name.replace(/^.*[\\/]/, "").replace(/[\u0000-\u001f]/g, "").trim();
    return name || null;
  }

  function errorDetail(body) {
    /* FastAPI gives {"detail": "text"} or, for validation errors, {"detail": [{"msg": ...}, ...]} */
    if (!body || body.detail === undefined || body.detail === null) return null;
    var d = body.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) {
      return d.map(function (item) {
        if (typeof item === "string") return item;
        var where = Array.isArray(item.loc) ? item.loc.filter(function (p) { return p !== "body" && p !== "query"; }).join(".") : "";
        return (where ? where + ": " : "") + (item.msg || JSON.stringify(item));
      }).join("; ");
    }
    return JSON.stringify(d);
  }

  /* ---------- choosing a file ---------- */

  function chooseFile(file) {
    if (!file) return;
    cancelRequest(true);
    hideError();
    hideResult();
    state.file = file;
    state.originalSize = null;
    if (state.originalURL) URL.revokeObjectURL(state.originalURL);
    state.originalURL = URL.createObjectURL(file);

    els.dropzone.setAttribute("data-state", "chosen");
    els.fileInfo.hidden = false;
    els.fileName.textContent = file.name || "pasted image";
    els.fileName.title = file.name || "";
    els.fileDetails.textContent = formatBytes(file.size);
    els.thumb.removeAttribute("src");

    var probe = new Image();
    var url = state.originalURL;
    probe.onload = function () {
      if (url !== state.originalURL) return;
      state.originalSize = { w: probe.naturalWidth, h: probe.naturalHeight };
      els.thumb.src = url;
      els.fileDetails.textContent = probe.naturalWidth + " × " + probe.naturalHeight + " px · " + formatBytes(file.size);
    };
    probe.onerror = function () {
      if (url !== state.originalURL) return;
      els.fileDetails.textContent = formatBytes(file.size) + " · this browser can't preview it, the server may still read it";
    };
    probe.src = url;

    els.enhance.disabled = false;
    setPageState("chosen");
    announce("Selected " + (file.name || "image") + ". Press Enhance to start.");
  }

  els.input.addEventListener("change", function () {
    if (els.input.files && els.input.files[0]) chooseFile(els.input.files[0]);
    els.input.value = ""; /* so choosing the same file again still fires "change" */
  });

  /* drag and drop: anywhere on the page, highlighted on the drop zone */
  var dragDepth = 0;
  function hasFiles(e) {
    var t = e.dataTransfer && e.dataTransfer.types;
    return !!t && Array.prototype.indexOf.call(t, "Files") !== -1;
  }
  document.addEventListener("dragenter", function (e) {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth++;
    els.dropzone.classList.add("is-dragover");
  });
  document.addEventListener("dragover", function (e) {
    if (!hasFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("dragleave", function (e) {
    if (!hasFiles(e)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) els.dropzone.classList.remove("is-dragover");
  });
  document.addEventListener("drop", function (e) {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth = 0;
    els.dropzone.classList.remove("is-dragover");
    var f = e.dataTransfer.files && e.dataTransfer.files[0];
    if (f) chooseFile(f);
  });

  /* paste an image from the clipboard */
  document.addEventListener("paste", function (e) {
    var files = e.clipboardData && e.clipboardData.files;
    if (files && files.length) {
      e.preventDefault();
      chooseFile(files[0]);
    }
  });

  /* ---------- options ---------- */

  function syncFormat() {
    var lossy = els.format.value !== "png";
    els.qualityField.hidden = !lossy;
    els.quality.disabled = !lossy;
  }
  function syncQuality() { els.qualityValue.textContent = els.quality.value; }

  try {
    var saved = JSON.parse(localStorage.getItem("enhancer.options") || "null");
    if (saved && FORMAT_LABEL[saved.format]) els.format.value = saved.format;
    if (saved && saved.quality >= 1 && saved.quality <= 100) els.quality.value = String(saved.quality);
    if (saved && ["1", "2", "4"].indexOf(String(saved.scale)) !== -1) els.scale.value = String(saved.scale);
  } catch (e) { /* storage unavailable: defaults */ }

  function saveOptions() {
    try {
      localStorage.setItem("enhancer.options", JSON.stringify({
        format: els.format.value, quality: Number(els.quality.value), scale: Number(els.scale.value)
      }));
    } catch (e) { /* ignore */ }
  }

  els.format.addEventListener("change", function () { syncFormat(); saveOptions(); });
  els.quality.addEventListener("input", syncQuality);
  els.quality.addEventListener("change", saveOptions);
  syncFormat();
  syncQuality();

  /* ---------- errors ---------- */

  function showError(title, message) {
    els.errorTitle.textContent = title;
    /* API details may start in lower case ("the upload is ..."): show them as a sentence */
    message = message ? message.charAt(0).toUpperCase() + message.slice(1) : "";
    els.errorMessage.textContent = message;
    els.errorMessage.hidden = !message;
    els.error.hidden = false;
    setPageState("error");
  }
  function hideError() { els.error.hidden = true; }

  /* ---------- API key (only when the server requires one) ---------- */

  /* The key lives in sessionStorage: it survives reloads of this tab, is gone when the tab is
   * closed and is never shared with other tabs; it reaches the server only in the header. */
  var KEY_STORE = "enhancer.apiKey";
  var keyFallback = null; /* when sessionStorage is unavailable: this page only */
  var access = { required: false };

  function storedKey() {
    try { return sessionStorage.getItem(KEY_STORE); } catch (e) { return keyFallback; }
  }
  function storeKey(key) {
    keyFallback = key;
    try {
      if (key) sessionStorage.setItem(KEY_STORE, key); else sessionStorage.removeItem(KEY_STORE);
    } catch (e) { /* kept in keyFallback */ }
  }
  function authHeaders(key) { return key ? { Authorization: "Bearer " + key } : {}; }

  function showKeyPrompt(message, focus) {
    els.keyForm.hidden = false;
    els.forgetKey.hidden = true;
    els.keyError.textContent = message || "";
    els.keyError.hidden = !message;
    if (focus) els.keyInput.focus();
  }
  function keyAccepted() {
    els.keyForm.hidden = true;
    els.keyError.hidden = true;
    els.forgetKey.hidden = false;
  }

  /* GET /access is open: it says whether uploads need a key and whether the stored one is valid */
  function checkAccess() {
    var key = storedKey();
    fetch("/access", { headers: authHeaders(key), cache: "no-store" }).then(function (r) {
      if (r.status === 401) {
        storeKey(null);
        access.required = true;
        showKeyPrompt("The key used earlier in this tab is no longer accepted. Enter a current one.");
        return null;
      }
      return r.ok ? r.json() : null;
    }).then(function (body) {
      if (!body) return;
      access.required = !!body.api_key_required;
      if (access.required && body.key_accepted) keyAccepted();
      else if (access.required) showKeyPrompt();
    }).catch(function () {
      /* unreachable, or a server without /access: an upload's answer will say what is wrong */
    }).then(function () {
      document.body.setAttribute("data-key-required", access.required ? "true" : "false");
    });
  }

  els.keyForm.addEventListener("submit", function (e) {
    e.preventDefault();
    var key = els.keyInput.value.trim();
    if (!key) { showKeyPrompt("Enter the key first.", true); return; }
    if (!/^[\x21-\x7e]+$/.test(key)) {
      showKeyPrompt("A key has only letters, digits and punctuation, without spaces. Check what was pasted.", true);
      return;
    }
    els.keyBtn.disabled = true;
    fetch("/access", { headers: authHeaders(key), cache: "no-store" }).then(function (r) {
      if (r.status === 401) {
        showKeyPrompt("This key was not accepted. Check it and try again.", true);
      } else if (!r.ok) {
        showKeyPrompt("The server could not check the key (" + r.status + "). Try again.", true);
      } else {
        storeKey(key);
        els.keyInput.value = "";
        keyAccepted();
        announce("Key accepted. It is kept for this tab only.");
        if (state.file) els.enhance.focus();
      }
    }, function () {
      showKeyPrompt("Could not reach the server to check the key. Try again.", true);
    }).then(function () { els.keyBtn.disabled = false; });
  });

  els.forgetKey.addEventListener("click", function () {
    storeKey(null);
    showKeyPrompt("", true);
    announce("Key forgotten.");
  });

  checkAccess();

  /* ---------- strength ---------- */

  function showStrengthHint() {
    var option = els.strength.options[els.strength.selectedIndex];
    els.strengthHint.textContent = option ? option.getAttribute("data-hint") : "";
  }
  els.strength.addEventListener("change", showStrengthHint);
  showStrengthHint();

  /* ---------- size (scale) ---------- */

  function showScaleHint() {
    var option = els.scale.options[els.scale.selectedIndex];
    els.scaleHint.textContent = option ? option.getAttribute("data-hint") : "";
  }
  els.scale.addEventListener("change", function () { showScaleHint(); saveOptions(); });
  showScaleHint();

  /* The sizes this server can answer with: GET /readyz lists the served models and their scales.
   * A scale none of them has is offered disabled, with the reason; if the list cannot be read
   * (still starting), every size stays offered and the server's answer says what it serves. */
  function checkScales() {
    fetch("/readyz", { cache: "no-store" }).then(function (r) { return r.ok ? r.json() : null; }).then(function (body) {
      if (!body || !Array.isArray(body.models)) return;
      var served = body.models.map(function (m) { return String(m.scale); });
      Array.prototype.forEach.call(els.scale.options, function (option) {
        var ok = served.indexOf(option.value) !== -1;
        option.disabled = !ok;
        option.textContent = option.textContent.replace(/ \(not on this server\)$/, "") + (ok ? "" : " (not on this server)");
      });
      if (els.scale.options[els.scale.selectedIndex].disabled) { els.scale.value = "1"; showScaleHint(); }
      document.body.setAttribute("data-scales", served.join(","));
    }).catch(function () { /* the upload's answer will say */ });
  }
  checkScales();

  /* ---------- sending ---------- */

  function setBusy(busy) {
    els.enhance.disabled = busy || !state.file;
    els.enhance.classList.toggle("is-busy", busy);
    els.enhance.setAttribute("aria-busy", busy ? "true" : "false");
    els.cancel.hidden = !busy;
    els.format.disabled = busy;
    els.strength.disabled = busy;
    els.scale.disabled = busy;
    els.quality.disabled = busy || els.format.value === "png";
    els.input.disabled = busy;
  }

  function stopTimer() {
    if (state.timer) { clearInterval(state.timer); state.timer = null; }
  }

  function showUploadProgress(loaded, total) {
    els.progress.hidden = false;
    els.progressLabel.textContent = "Uploading…";
    if (total > 0) {
      var pct = Math.min(100, Math.round(loaded / total * 100));
      els.progressBar.max = 100;
      els.progressBar.value = pct;
      els.progressExtra.textContent = pct + "% of " + formatBytes(total);
    } else {
      els.progressBar.removeAttribute("value");
      els.progressExtra.textContent = "";
    }
  }

  function showWorking(startedAt) {
    if (state.timer) return;
    setPageState("working");
    els.progress.hidden = false;
    els.progressLabel.textContent = "Enhancing on the server…";
    els.progressBar.removeAttribute("value"); /* indeterminate */
    announce("Upload complete. The server is enhancing your image.");
    var tick = function () { els.progressExtra.textContent = formatSeconds(Date.now() - startedAt); };
    tick();
    state.timer = setInterval(tick, 200);
  }

  function cancelRequest(silent) {
    if (!state.xhr) return;
    var xhr = state.xhr;
    state.xhr = null;
    xhr.abort();
    stopTimer();
    setBusy(false);
    els.progress.hidden = true;
    if (!silent) {
      setPageState("chosen");
      announce("Cancelled.");
    }
  }
  els.cancel.addEventListener("click", function () { cancelRequest(false); });
  document.addEventListener("keydown", function (e) {
    if (e.key === "Escape" && state.xhr) cancelRequest(false);
  });

  els.form.addEventListener("submit", function (e) {
    e.preventDefault();
    if (!state.file || state.xhr) return;
    if (access.required && !storedKey()) {
      showKeyPrompt("Enter the API key first, then press Enhance again.", true);
      return;
    }
    send(state.file);
  });

  function send(file) {
    hideError();
    var fmt = els.format.value;
    var scale = Number(els.scale.value) || 1;
    var params = new URLSearchParams({ format: fmt, strength: els.strength.value, scale: String(scale) });
    if (fmt !== "png") params.set("quality", els.quality.value);

    var body = new FormData();
    body.append("image", file, file.name || "image");

    var xhr = new XMLHttpRequest();
    state.xhr = xhr;
    var startedAt = Date.now();
    var workStartedAt = null;
    xhr.open("POST", "/upscale?" + params.toString());
    xhr.responseType = "blob";
    xhr.setRequestHeader("Accept", "image/*, application/json");
    var key = storedKey();
    if (key) xhr.setRequestHeader("Authorization", "Bearer " + key);

    xhr.upload.onprogress = function (ev) {
      if (state.xhr !== xhr) return;
      showUploadProgress(ev.loaded, ev.lengthComputable ? ev.total : 0);
    };
    xhr.upload.onload = function () {
      if (state.xhr !== xhr) return;
      workStartedAt = Date.now();
      showWorking(workStartedAt);
    };
    xhr.onload = function () {
      if (state.xhr !== xhr) return;
      state.xhr = null;
      stopTimer();
      setBusy(false);
      els.progress.hidden = true;
      if (xhr.status === 200) {
        handleResult(xhr, file, fmt, scale, Date.now() - startedAt);
      } else {
        handleHttpError(xhr);
      }
    };
    xhr.onerror = function () {
      if (state.xhr !== xhr) return;
      state.xhr = null;
      stopTimer();
      setBusy(false);
      els.progress.hidden = true;
      showError("Could not reach the server",
        "The connection failed before an answer came back. Check your network connection and that the server is running, then try again.");
      announce("Network error.");
    };

    setBusy(true);
    setPageState("uploading");
    showUploadProgress(0, file.size);
    announce("Uploading " + (file.name || "image") + ".");
    xhr.send(body);
  }

  function handleHttpError(xhr) {
    var status = xhr.status;
    var title = ERROR_TITLE[status] || ("The server answered with an error (" + status + ")");
    var retry = xhr.getResponseHeader("Retry-After");
    var finish = function (detail) {
      var message = detail || (status + " " + (xhr.statusText || "error"));
      if ((status === 503 || status === 429) && retry && /^\d+$/.test(retry.trim())) {
        message += " Try again in " + retry.trim() + " s.";
      }
      showError(title, message);
      announce(title + ". " + message);
      if (status === 401) { /* no key yet, or it was withdrawn on the server */
        storeKey(null);
        access.required = true;
        showKeyPrompt("The server did not accept the key. Enter a current one, then press Enhance again.", true);
      }
    };
    var blob = xhr.response;
    if (!blob || typeof blob.text !== "function") { finish(null); return; }
    blob.text().then(function (text) {
      var detail = null;
      try { detail = errorDetail(JSON.parse(text)); } catch (e) { detail = null; }
      finish(detail);
    }, function () { finish(null); });
  }

  /* ---------- result ---------- */

  function loadImage(img, src) {
    return new Promise(function (resolve) {
      img.onload = function () { resolve(true); };
      img.onerror = function () { resolve(false); };
      img.src = src;
    });
  }

  function handleResult(xhr, file, fmt, scale, elapsedMs) {
    var blob = xhr.response;
    var type = (xhr.getResponseHeader("Content-Type") || blob.type || "").split(";")[0];
    if (type && type.indexOf("image/") !== 0) {
      showError("Unexpected answer from the server", "Expected an image but got " + type + ".");
      return;
    }
    var ext = fmt === "jpeg" ? "jpg" : fmt;
    var name = filenameFromDisposition(xhr.getResponseHeader("Content-Disposition")) ||
      (stemOf(file.name) + (scale > 1 ? "_x" + scale : "_enhanced") + "." + ext);

    if (state.resultURL) URL.revokeObjectURL(state.resultURL);
    state.resultURL = URL.createObjectURL(blob);

    /* X-Enhancer-Passed-Through: the model was not run and the answer holds the input's own pixels,
     * for a JPEG saved at a high quality ("jpeg-quality=<q>"), one saved again from a coarser JPEG at the
     * same block grid ("resaved-jpeg") or when asked ("strength=off") */
    var passedThrough = xhr.getResponseHeader("X-Enhancer-Passed-Through") || "";
    var goodJpeg = /jpeg-quality=(\d+)/.exec(passedThrough);
    var resaved = passedThrough === "resaved-jpeg";
    var label = FORMAT_LABEL[fmt] || fmt;
    /* enlarged without restoring: strength off at scale 2 or 4 (the model still ran, to enlarge) */
    var enlargedOnly = scale > 1 && els.strength.value === "off";
    state.resultScale = scale;
    state.afterWord = passedThrough ? "unchanged" : (enlargedOnly ? "enlarged" : "enhanced");
    var times = scale > 1 ? " " + scale + "×" : "";
    els.tagAfter.textContent = passedThrough ? "Unchanged" : (enlargedOnly ? "Enlarged" : "Enhanced") + times;
    els.after.alt = passedThrough ? "The server's answer, unchanged" :
      (enlargedOnly ? "Enlarged image" : "Enhanced image") + (scale > 1 ? ", " + scale + " times larger" : "");
    showEnlargeChoice(scale);
    setSplit(state.split); /* its spoken value names the right side */
    els.resultNote.hidden = !passedThrough;
    els.answerLink.hidden = true;
    if (goodJpeg || resaved) {
      /* the answer is the original's pixels encoded again, usually bigger: offer the original file */
      var original = file.name || "image.jpg";
      offerDownload(state.originalURL, original);
      els.resultNoteText.textContent = (goodJpeg ? "This photo is already a good JPEG (quality " + goodJpeg[1] +
        "): the model would not improve it, so the server left its pixels unchanged." :
        "This JPEG was saved from an earlier, lower-quality JPEG with its blocks in the same place: they were " +
        "already in the picture it was made from, so the server left its pixels unchanged (Strength Strong " +
        "removes them).") + " The download is your original file (" +
        formatBytes(file.size) + "), which holds exactly these pixels; the server's " + label + " copy is " +
        formatBytes(blob.size) + ".";
      els.answerLink.hidden = false;
      els.answerLink.href = state.resultURL;
      els.answerLink.setAttribute("download", name);
      els.answerLink.textContent = "Download the " + label + " copy anyway";
    } else {
      offerDownload(state.resultURL, name);
      if (passedThrough) {
        els.resultNoteText.textContent = "Strength was set to Off: the model was not run, and the image's own pixels " +
          "come back as " + label + ".";
      }
    }

    Promise.all([loadImage(els.after, state.resultURL), loadImage(els.before, state.originalURL)]).then(function (ok) {
      if (!ok[0]) {
        showError("The result could not be displayed", "Your browser cannot show " + (FORMAT_LABEL[fmt] || fmt) +
          " images here, but you can still download it.");
      }
      var w = els.after.naturalWidth || els.before.naturalWidth;
      var h = els.after.naturalHeight || els.before.naturalHeight;
      state.natural = { w: w, h: h };
      var beforeOk = ok[1];
      els.compare.classList.toggle("no-before", !beforeOk);
      els.split.disabled = !beforeOk;
      if (!beforeOk) setSplit(0);

      var size = w + " × " + h + " px";
      if (scale > 1 && state.originalSize) size += " (" + scale + "× " + state.originalSize.w + " × " + state.originalSize.h + ")";
      var bits = [size, (FORMAT_LABEL[fmt] || fmt) + " " + formatBytes(blob.size),
        "done in " + formatSeconds(elapsedMs)];
      if (goodJpeg) bits.push("already a good JPEG (quality " + goodJpeg[1] + "): returned unchanged");
      else if (resaved) bits.push("saved again from a lower-quality JPEG: returned unchanged");
      else if (passedThrough) bits.push("strength off: returned unchanged");
      else if (enlargedOnly) bits.push("strength off: enlarged, not restored");
      els.resultSummary.textContent = bits.join(" · ") + (beforeOk ? "" : " · original can't be shown in this browser");

      els.result.hidden = false;
      setZoom("fit");
      updateSplit();
      setPageState("done");
      announce("Done. Compare the original and the " + state.afterWord + " image, then download " +
        els.download.getAttribute("download") + ".");
      els.resultTitle.focus({ preventScroll: true });
      els.result.scrollIntoView({ behavior: matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth", block: "start" });
    });
  }

  /* ---------- an enlarged answer: the original stretched to its size ---------- */

  var enlargeButtons = Array.prototype.slice.call(els.enlargeChoice.querySelectorAll("[data-before]"));

  function setBeforeMode(mode) {
    state.beforeMode = mode;
    enlargeButtons.forEach(function (b) { b.setAttribute("aria-pressed", b.getAttribute("data-before") === mode ? "true" : "false"); });
    if (state.resultScale > 1) els.compare.setAttribute("data-before", mode);
    var how = mode === "nearest" ? "nearest" : "smooth";
    els.tagBefore.textContent = state.resultScale > 1 ? "Original " + state.resultScale + "×, " + how : "Original";
    els.before.alt = state.resultScale > 1 ? "Original image, enlarged " + state.resultScale + " times (" + how + ")" : "Original image";
  }

  function showEnlargeChoice(scale) {
    els.enlargeChoice.hidden = scale <= 1;
    if (scale <= 1) els.compare.removeAttribute("data-before");
    setBeforeMode(state.beforeMode);
  }

  enlargeButtons.forEach(function (b) {
    b.addEventListener("click", function () { setBeforeMode(b.getAttribute("data-before")); });
  });

  function offerDownload(url, filename) {
    els.download.href = url;
    els.download.setAttribute("download", filename);
    els.downloadName.textContent = filename;
    els.download.setAttribute("aria-label", "Download " + filename);
  }

  function hideResult() {
    els.result.hidden = true;
    els.after.removeAttribute("src");
    els.before.removeAttribute("src");
    if (state.resultURL) { URL.revokeObjectURL(state.resultURL); state.resultURL = null; }
  }

  /* ---------- zoom ---------- */

  var zoomButtons = Array.prototype.slice.call(document.querySelectorAll("[data-zoom]")).filter(function (b) { return b.tagName === "BUTTON"; });

  function fitScale() {
    var n = state.natural;
    if (!n || !n.w) return 1;
    var vw = els.viewport.clientWidth || 1;
    var maxH = parseFloat(getComputedStyle(els.viewport).maxHeight);
    if (!isFinite(maxH) || maxH <= 0) maxH = window.innerHeight * 0.7;
    return Math.min(vw / n.w, maxH / n.h, 8);
  }

  function applyScale(scale, anchorX, anchorY) {
    var n = state.natural;
    if (!n) return;
    var vp = els.viewport;
    var old = state.scale || 1;
    var ax = anchorX === undefined ? vp.clientWidth / 2 : anchorX;
    var ay = anchorY === undefined ? vp.clientHeight / 2 : anchorY;
    /* the image point under the anchor stays under it */
    var ix = (vp.scrollLeft + ax - els.stage.offsetLeft) / old;
    var iy = (vp.scrollTop + ay - els.stage.offsetTop) / old;

    state.scale = scale;
    els.stage.style.width = Math.max(1, Math.round(n.w * scale)) + "px";
    els.stage.style.height = Math.max(1, Math.round(n.h * scale)) + "px";
    /* show real pixels when magnified instead of a smoothed blur */
    els.compare.classList.toggle("is-pixelated", scale > 1.01);

    vp.scrollLeft = ix * scale + els.stage.offsetLeft - ax;
    vp.scrollTop = iy * scale + els.stage.offsetTop - ay;
    var pannable = vp.scrollWidth > vp.clientWidth + 1 || vp.scrollHeight > vp.clientHeight + 1;
    vp.classList.toggle("can-pan", pannable);
    updateSplit();
  }

  function setZoom(mode, anchorX, anchorY) {
    state.zoom = mode;
    els.compare.setAttribute("data-zoom", String(mode));
    zoomButtons.forEach(function (b) { b.setAttribute("aria-pressed", b.getAttribute("data-zoom") === String(mode) ? "true" : "false"); });
    applyScale(mode === "fit" ? fitScale() : Number(mode), anchorX, anchorY);
  }

  zoomButtons.forEach(function (b) {
    b.addEventListener("click", function () { setZoom(b.getAttribute("data-zoom")); });
  });

  /* double-click: zoom to 400% at that point, or back to fit */
  els.viewport.addEventListener("dblclick", function (e) {
    if (e.target.closest && e.target.closest(".divider-handle")) return;
    var r = els.viewport.getBoundingClientRect();
    setZoom(state.zoom === "fit" ? "4" : "fit", e.clientX - r.left, e.clientY - r.top);
  });

  /* keyboard shortcuts while the comparison has focus: + / - zoom, 0 fit */
  els.viewport.addEventListener("keydown", function (e) {
    var steps = ["fit", "1", "2", "4", "8"];
    var i = steps.indexOf(String(state.zoom));
    if (e.key === "+" || e.key === "=") { setZoom(steps[Math.min(steps.length - 1, i + 1)]); e.preventDefault(); }
    else if (e.key === "-" || e.key === "_") { setZoom(steps[Math.max(0, i - 1)]); e.preventDefault(); }
    else if (e.key === "0") { setZoom("fit"); e.preventDefault(); }
  });

  /* drag to pan with a mouse (touch screens pan natively) */
  var pan = null;
  els.viewport.addEventListener("pointerdown", function (e) {
    if (e.pointerType !== "mouse" || e.button !== 0) return;
    if (!els.viewport.classList.contains("can-pan")) return;
    pan = { id: e.pointerId, x: e.clientX, y: e.clientY, left: els.viewport.scrollLeft, top: els.viewport.scrollTop };
    els.viewport.setPointerCapture(e.pointerId);
    els.viewport.classList.add("is-panning");
    e.preventDefault();
  });
  els.viewport.addEventListener("pointermove", function (e) {
    if (!pan || e.pointerId !== pan.id) return;
    els.viewport.scrollLeft = pan.left - (e.clientX - pan.x);
    els.viewport.scrollTop = pan.top - (e.clientY - pan.y);
  });
  function endPan(e) {
    if (!pan || e.pointerId !== pan.id) return;
    pan = null;
    els.viewport.classList.remove("is-panning");
  }
  els.viewport.addEventListener("pointerup", endPan);
  els.viewport.addEventListener("pointercancel", endPan);

  /* ---------- before / after divider ---------- */

  /* The divider sits at a fraction of the visible part of the image, so it stays on screen
   * however far the user zooms and pans. */
  function visibleSpan() {
    var vp = els.viewport;
    var left = Math.max(els.stage.offsetLeft - vp.scrollLeft, 0);
    var right = Math.min(els.stage.offsetLeft + els.stage.offsetWidth - vp.scrollLeft, vp.clientWidth);
    var top = Math.max(els.stage.offsetTop - vp.scrollTop, 0);
    var bottom = Math.min(els.stage.offsetTop + els.stage.offsetHeight - vp.scrollTop, vp.clientHeight);
    return { left: left, right: Math.max(left, right), top: top, bottom: Math.max(top, bottom) };
  }

  function updateSplit() {
    if (els.result.hidden) return;
    var span = visibleSpan();
    var x = span.left + (span.right - span.left) * state.split / 100;
    var clip = x + els.viewport.scrollLeft - els.stage.offsetLeft;
    /* each layer shows only its own side: drawn over each other, a semi-transparent image would
     * look more opaque than it is */
    els.after.style.clipPath = "inset(0 0 0 " + clip.toFixed(1) + "px)";
    els.before.style.clipPath = "inset(0 " + (els.stage.offsetWidth - clip).toFixed(1) + "px 0 0)";
    els.divider.style.left = x.toFixed(1) + "px";
    els.divider.style.top = span.top + "px";
    els.divider.style.bottom = "auto";
    els.divider.style.height = (span.bottom - span.top) + "px";
  }

  function setSplit(pct) {
    pct = Math.max(0, Math.min(100, Math.round(pct)));
    state.split = pct;
    els.split.value = String(pct);
    els.split.setAttribute("aria-valuetext", pct + "% original, " + (100 - pct) + "% " + state.afterWord);
    updateSplit();
  }

  els.split.addEventListener("input", function () { setSplit(Number(els.split.value)); });
  els.viewport.addEventListener("scroll", updateSplit, { passive: true });

  /* drag the round handle on the image itself */
  var handle = els.divider.querySelector(".divider-handle");
  var dragging = null;
  handle.addEventListener("pointerdown", function (e) {
    dragging = e.pointerId;
    handle.setPointerCapture(e.pointerId);
    e.preventDefault();
    e.stopPropagation();
  });
  handle.addEventListener("pointermove", function (e) {
    if (dragging !== e.pointerId) return;
    var span = visibleSpan();
    var r = els.viewport.getBoundingClientRect();
    var width = span.right - span.left;
    if (width <= 0) return;
    setSplit((e.clientX - r.left - span.left) / width * 100);
  });
  function endDrag(e) { if (dragging === e.pointerId) dragging = null; }
  handle.addEventListener("pointerup", endDrag);
  handle.addEventListener("pointercancel", endDrag);

  /* keep "fit" fitted and the divider in place when the window changes size */
  var relayout = function () {
    if (els.result.hidden) return;
    if (state.zoom === "fit") applyScale(fitScale()); else updateSplit();
  };
  if (window.ResizeObserver) new ResizeObserver(relayout).observe(els.viewport);
  else window.addEventListener("resize", relayout);

  setSplit(50);
})();
