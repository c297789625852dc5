/*
 * Diffusion Edit Studio: a draggable OpenPose skeleton editor living in a gr.HTML component.
 *
 * Loaded through gr.HTML(head=...) (see ui/pose_editor.py); its js_on_load calls
 * window.DiffusionEditPoseEditor.mount(element, props, watch).
 *
 *  - props.value (a JSON string, set by Python) = {"pose": OpenPose JSON | null,
 *    "background": image URL | null, "note": text | null, "rev": nonce}.
 *    watch("value") redraws whenever Python sends a new one.
 *  - Edits (drag, delete, add) update the drawing live; when an edit ends, the OpenPose JSON
 *    is written into the hidden textbox #<props.json_elem_id> with an "input" event (so Python
 *    receives it) and props.value is updated so a re-mount shows the edited pose.
 *  - The joint names, limb pairs and colours come from window.DiffusionEditPoseTables,
 *    written by Python from engine/core/conditions.py so both sides draw the same.
 */
(function () {
  "use strict";
  if (window.DiffusionEditPoseEditor) return; // loaded once per page

  const HIT_RADIUS = 14; // CSS pixels around a joint that grab it
  const LIMB_BRIGHTNESS = 0.6;
  const MAX_HEIGHT = 560; // CSS pixels

  function tables() {
    return window.DiffusionEditPoseTables;
  }

  function rgb(c, k) {
    k = k === undefined ? 1 : k;
    return "rgb(" + Math.round(c[0] * k) + "," + Math.round(c[1] * k) + "," + Math.round(c[2] * k) + ")";
  }

  // OpenPose JSON -> {w, h, people: [[[x, y, c] x 18], ...]}
  function parsePose(json) {
    if (!json || !json.people) return null;
    const n = tables().joints.length;
    const people = json.people.map(function (p) {
      const flat = p.pose_keypoints_2d || [];
      const joints = [];
      for (let j = 0; j < n; j++) {
        const c = Number(flat[3 * j + 2]) || 0;
        joints.push(c > 0 ? [Number(flat[3 * j]), Number(flat[3 * j + 1]), c] : [0, 0, 0]);
      }
      return joints;
    });
    return { w: json.canvas_width, h: json.canvas_height, people: people };
  }

  function poseToJson(pose) {
    return {
      canvas_width: pose.w,
      canvas_height: pose.h,
      people: pose.people.map(function (joints) {
        const flat = [];
        joints.forEach(function (j) {
          if (j[2] > 0) flat.push(Math.round(j[0] * 100) / 100, Math.round(j[1] * 100) / 100, j[2]);
          else flat.push(0, 0, 0);
        });
        return { pose_keypoints_2d: flat };
      }),
    };
  }

  function clonePose(pose) {
    return pose && { w: pose.w, h: pose.h, people: pose.people.map(function (p) { return p.map(function (j) { return j.slice(); }); }) };
  }

  // Size a canvas to its displayed width (times the device pixel ratio) and the pose's aspect.
  function fit(canvas, pose) {
    if (!pose) return 0;
    canvas.style.maxWidth = (MAX_HEIGHT * pose.w / pose.h) + "px"; // tall photos stay on screen
    const cssW = canvas.clientWidth;
    if (!cssW || !pose) return 0;
    const ratio = window.devicePixelRatio || 1;
    const cssH = cssW * pose.h / pose.w;
    canvas.style.height = cssH + "px";
    const w = Math.round(cssW * ratio), h = Math.round(cssH * ratio);
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    return canvas.width / pose.w; // device pixels per pose pixel
  }

  // The OpenPose image: limbs as filled ellipses at 60 % brightness, joints as dots, on black.
  function drawOpenpose(canvas, pose) {
    const s = fit(canvas, pose);
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (!s) return;
    const stick = Math.max(1, 4 * Math.min(canvas.width, canvas.height) / 512);
    const t = tables();
    pose.people.forEach(function (joints) {
      t.limbs.forEach(function (limb) {
        const a = joints[limb[0]], b = joints[limb[1]];
        if (a[2] <= 0 || b[2] <= 0) return; // a missing joint drops its limbs
        const ax = a[0] * s, ay = a[1] * s, bx = b[0] * s, by = b[1] * s;
        ctx.beginPath();
        ctx.ellipse((ax + bx) / 2, (ay + by) / 2, Math.max(0.5, Math.hypot(bx - ax, by - ay) / 2), stick,
                    Math.atan2(by - ay, bx - ax), 0, 2 * Math.PI);
        ctx.fillStyle = rgb(limb[2], LIMB_BRIGHTNESS);
        ctx.fill();
      });
      joints.forEach(function (j, i) {
        if (j[2] <= 0) return;
        ctx.beginPath();
        ctx.arc(j[0] * s, j[1] * s, stick, 0, 2 * Math.PI);
        ctx.fillStyle = rgb(t.colors[i]);
        ctx.fill();
      });
    });
  }

  function mount(element, props, watch) {
    const edit = element.querySelector("[data-role=edit]");
    const preview = element.querySelector("[data-role=preview]");
    const status = element.querySelector("[data-role=status]");
    const addSelect = element.querySelector("[data-role=add]");
    const t = tables();
    const st = { pose: null, initial: null, bg: null, bgSrc: null, note: "", sel: null, drag: null, placing: -1, last: null };

    function setStatus(text) { status.textContent = text || st.note || ""; }

    function person() { return st.sel ? st.sel.p : 0; }

    // Refill the "add a missing joint" list for the selected person.
    function refreshAdd() {
      while (addSelect.options.length > 1) addSelect.remove(1);
      if (!st.pose || !st.pose.people.length) return;
      st.pose.people[person()].forEach(function (j, i) {
        if (j[2] <= 0) addSelect.add(new Option(t.joints[i], String(i)));
      });
      addSelect.value = st.placing >= 0 ? String(st.placing) : "";
      addSelect.disabled = addSelect.options.length <= 1;
    }

    function draw() {
      const ctx = edit.getContext("2d");
      if (!st.pose) {
        edit.style.maxWidth = ""; preview.style.maxWidth = "";
        edit.width = edit.clientWidth || 300; edit.height = 150; edit.style.height = "150px";
        ctx.fillStyle = "#222"; ctx.fillRect(0, 0, edit.width, edit.height);
        ctx.fillStyle = "#bbb"; ctx.font = "14px sans-serif"; ctx.textAlign = "center";
        ctx.fillText("Upload a photo to edit its pose", edit.width / 2, edit.height / 2);
        drawOpenpose(preview, { w: 2, h: 1, people: [] });
        return;
      }
      const s = fit(edit, st.pose);
      if (!s) return; // not displayed yet (e.g. a hidden tab); the ResizeObserver redraws
      const ratio = window.devicePixelRatio || 1;
      ctx.fillStyle = "#111";
      ctx.fillRect(0, 0, edit.width, edit.height);
      if (st.bg && st.bg.complete && st.bg.naturalWidth) {
        ctx.globalAlpha = 0.5; // the photo, faded
        ctx.drawImage(st.bg, 0, 0, edit.width, edit.height);
        ctx.globalAlpha = 1;
      }
      ctx.lineCap = "round";
      st.pose.people.forEach(function (joints, p) {
        t.limbs.forEach(function (limb) {
          const a = joints[limb[0]], b = joints[limb[1]];
          if (a[2] <= 0 || b[2] <= 0) return;
          ctx.beginPath();
          ctx.moveTo(a[0] * s, a[1] * s);
          ctx.lineTo(b[0] * s, b[1] * s);
          ctx.strokeStyle = rgb(limb[2]);
          ctx.lineWidth = 4 * ratio;
          ctx.stroke();
        });
        joints.forEach(function (j, i) {
          if (j[2] <= 0) return;
          const selected = st.sel && st.sel.p === p && st.sel.j === i;
          ctx.beginPath();
          ctx.arc(j[0] * s, j[1] * s, (selected ? 8 : 6) * ratio, 0, 2 * Math.PI);
          ctx.fillStyle = rgb(t.colors[i]);
          ctx.fill();
          ctx.lineWidth = (selected ? 3 : 1.5) * ratio;
          ctx.strokeStyle = selected ? "#fff" : "rgba(0,0,0,0.8)";
          ctx.stroke();
        });
      });
      drawOpenpose(preview, st.pose);
    }

    // Send the edited pose to Python (hidden textbox + the component's own value).
    function commit() {
      if (!st.pose) return;
      const text = JSON.stringify(poseToJson(st.pose));
      const box = document.getElementById(props.json_elem_id);
      const field = box && box.querySelector("textarea, input");
      if (field) {
        field.value = text;
        field.dispatchEvent(new Event("input", { bubbles: true }));
      }
      st.last = JSON.stringify({ pose: poseToJson(st.pose), background: st.bgSrc, note: st.note, rev: "js" });
      props.value = st.last;
    }

    // Load a value sent by Python.
    function load(raw) {
      if (raw === st.last) return;
      let v = null;
      try { v = raw ? JSON.parse(raw) : null; } catch (e) { v = null; }
      st.pose = v ? parsePose(v.pose) : null;
      st.initial = clonePose(st.pose);
      st.note = (v && v.note) || "";
      st.sel = null; st.drag = null; st.placing = -1;
      const src = (v && v.background) || null;
      if (src !== st.bgSrc) {
        st.bgSrc = src;
        st.bg = null;
        if (src) {
          const img = new Image();
          img.onload = function () { if (st.bgSrc === src) { st.bg = img; draw(); } };
          img.src = src;
        }
      }
      refreshAdd(); setStatus(); draw();
    }

    function toPose(ev) {
      const r = edit.getBoundingClientRect();
      const x = (ev.clientX - r.left) / r.width * st.pose.w;
      const y = (ev.clientY - r.top) / r.height * st.pose.h;
      return [Math.min(Math.max(x, 0), st.pose.w), Math.min(Math.max(y, 0), st.pose.h)];
    }

    // The present joint nearest to the pointer, within HIT_RADIUS CSS pixels.
    function hit(ev) {
      const r = edit.getBoundingClientRect();
      const k = r.width / st.pose.w;
      let best = null, bestD = HIT_RADIUS;
      st.pose.people.forEach(function (joints, p) {
        joints.forEach(function (j, i) {
          if (j[2] <= 0) return;
          const d = Math.hypot(r.left + j[0] * k - ev.clientX, r.top + j[1] * k - ev.clientY);
          if (d <= bestD) { bestD = d; best = { p: p, j: i }; }
        });
      });
      return best;
    }

    function remove(target) {
      if (!target) return;
      st.pose.people[target.p][target.j] = [0, 0, 0];
      st.sel = null;
      refreshAdd(); setStatus("Removed " + t.joints[target.j] + " and its limbs"); draw(); commit();
    }

    edit.addEventListener("pointerdown", function (ev) {
      if (!st.pose) return;
      edit.focus({ preventScroll: true }); // scrolling now would move the joints under the pointer
      if (st.placing >= 0) { // put back a missing joint where the user clicked
        const xy = toPose(ev), p = person(), j = st.placing;
        st.pose.people[p][j] = [xy[0], xy[1], 1];
        st.placing = -1; st.sel = { p: p, j: j };
        refreshAdd(); setStatus("Added " + t.joints[j]); draw(); commit();
        ev.preventDefault();
        return;
      }
      const target = hit(ev);
      if (ev.button === 2 || (ev.altKey && ev.button === 0)) { remove(target); ev.preventDefault(); return; }
      if (ev.button !== 0) return;
      st.sel = target;
      refreshAdd();
      if (target) {
        st.drag = { id: ev.pointerId, moved: false };
        edit.setPointerCapture(ev.pointerId);
        setStatus(t.joints[target.j] + " of person " + (target.p + 1));
        ev.preventDefault();
      } else setStatus();
      draw();
    });
    edit.addEventListener("pointermove", function (ev) {
      if (!st.drag || ev.pointerId !== st.drag.id || !st.sel) {
        if (st.pose && !st.drag) edit.style.cursor = st.placing >= 0 ? "crosshair" : (hit(ev) ? "grab" : "default");
        return;
      }
      const xy = toPose(ev);
      const j = st.pose.people[st.sel.p][st.sel.j];
      j[0] = xy[0]; j[1] = xy[1];
      st.drag.moved = true;
      edit.style.cursor = "grabbing";
      draw();
    });
    function endDrag(ev) {
      if (!st.drag || ev.pointerId !== st.drag.id) return;
      const moved = st.drag.moved;
      st.drag = null;
      edit.style.cursor = "grab";
      if (moved) commit();
    }
    edit.addEventListener("pointerup", endDrag);
    edit.addEventListener("pointercancel", endDrag);
    edit.addEventListener("contextmenu", function (ev) { ev.preventDefault(); });
    edit.addEventListener("keydown", function (ev) {
      if ((ev.key === "Delete" || ev.key === "Backspace") && st.sel) { remove(st.sel); ev.preventDefault(); }
      if (ev.key === "Escape") { st.placing = -1; st.sel = null; refreshAdd(); setStatus(); draw(); }
    });
    element.querySelector("[data-act=delete]").addEventListener("click", function () {
      if (st.sel) remove(st.sel); else setStatus("Click a joint first, then delete it (or right-click it)");
    });
    element.querySelector("[data-act=reset]").addEventListener("click", function () {
      if (!st.initial) return;
      st.pose = clonePose(st.initial); st.sel = null; st.placing = -1;
      refreshAdd(); setStatus("Back to the detected pose"); draw(); commit();
    });
    addSelect.addEventListener("change", function () {
      st.placing = addSelect.value === "" ? -1 : Number(addSelect.value);
      if (st.placing >= 0) setStatus("Click on the photo to place " + t.joints[st.placing]);
      else setStatus();
    });

    if (window.ResizeObserver) new ResizeObserver(function () { draw(); }).observe(edit);
    watch("value", function () { load(props.value); });
    load(props.value);
  }

  window.DiffusionEditPoseEditor = { mount: mount, parsePose: parsePose, poseToJson: poseToJson };
})();
