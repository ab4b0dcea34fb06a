// The image-sets page sends its files to the server as they are, in one multipart request that the server spools to
// disk, not through a callback: a set may hold hundreds of megabytes, far over what a callback may carry. The drop
// zone is a dcc.Upload for its looks and its file dialog; the files it is given are caught here, before the Upload
// reads them into memory, and kept on its element until "Upload and index" sends them.
(function () {
    "use strict";
    const ZONE = "sets-files";
    const megabytes = function (count) { return (count / 1048576).toFixed(1) + " MB"; };
    const show = function (id, props) { window.dash_clientside.set_props(id, props); };
    const zoneOf = function (target) { return target instanceof Element ? target.closest("#" + ZONE) : null; };

    function choose(zone, files) {
        zone.dinoscopeFiles = Array.from(files || []);
        const count = zone.dinoscopeFiles.length;
        const bytes = zone.dinoscopeFiles.reduce(function (sum, file) { return sum + file.size; }, 0);
        const names = zone.dinoscopeFiles.slice(0, 5).map(function (file) { return file.name; }).join(", ");
        show("sets-chosen", {children: count ? count + (count === 1 ? " file" : " files") + " chosen (" +
            megabytes(bytes) + "): " + names + (count > 5 ? ", ..." : "") : ""});
    }

    // Caught in the capture phase, before React (which listens at its root) hands them to the Upload.
    document.addEventListener("change", function (event) {
        const zone = zoneOf(event.target);
        if (!zone) { return; }
        event.stopPropagation();
        choose(zone, event.target.files);
        event.target.value = "";  // the same files can be chosen again after a refusal
    }, true);
    document.addEventListener("drop", function (event) {
        const zone = zoneOf(event.target);
        if (!zone) { return; }
        event.preventDefault();
        event.stopPropagation();
        choose(zone, event.dataTransfer.files);
    }, true);

    window.dash_clientside = Object.assign({}, window.dash_clientside, {
        imageSets: {
            // Sends the chosen files as a new set named `name`, or into the set `target`; the server's answer
            // (the ticket of the index run, or why it refused) goes to the page. Returns the first status line.
            send: function (clicks, name, target) {
                const noUpdate = window.dash_clientside.no_update;
                const zone = document.getElementById(ZONE);
                const files = zone && zone.dinoscopeFiles || [];
                if (!clicks) { return noUpdate; }
                if (!files.length) {
                    show("sets-sending", {className: "small mt-1 text-danger"});
                    return "Drop images or one .zip first (or click the box to choose them).";
                }
                const form = new FormData();
                files.forEach(function (file) { form.append("files", file, file.name); });
                if (target) { form.append("into", target); } else { form.append("dataset", name || ""); }
                const request = new XMLHttpRequest();
                request.open("POST", "/image-sets/upload");
                request.setRequestHeader("X-Dinoscope-Upload", "1");
                request.upload.onprogress = function (event) {
                    if (!event.lengthComputable) { return; }
                    show("sets-sending", {children: "Sending: " + megabytes(event.loaded) + " of " +
                        megabytes(event.total), className: "small mt-1 text-muted"});
                };
                request.onload = function () {
                    let answer = null;
                    try { answer = JSON.parse(request.responseText); } catch (error) { answer = null; }
                    if (!answer) {
                        show("sets-sending", {children: "The server refused the upload (" + request.status + " " +
                            request.statusText + ")" + (request.status === 413 ? ": it is too large" : ""),
                                              className: "small mt-1 text-danger"});
                        return;
                    }
                    show("sets-sending", {children: answer.message, className: answer.ticket ?
                        "small mt-1 text-success" : "small mt-1 text-danger"});
                    if (answer.ticket) {
                        choose(zone, []);
                        show("sets-ticket", {data: answer.ticket});
                    }
                };
                request.onerror = function () {
                    show("sets-sending", {children: "The upload did not reach the server: check the connection " +
                        "and send it again.", className: "small mt-1 text-danger"});
                };
                show("sets-sending", {className: "small mt-1 text-muted"});
                request.send(form);
                return "Sending...";
            }
        }
    });
})();
