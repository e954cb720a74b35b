"use strict";
// Swagger UI (the swagger-ui-bundle package's files, served by the portal: no CDN).
const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({ url: root.dataset.url, dom_id: "#swagger-ui", deepLinking: true });
